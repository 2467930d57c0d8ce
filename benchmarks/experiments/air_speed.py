"""Question 5, CoLM-Air speed: time to the first token when the prompt's keys and values come from
chain 1 only (Air's prefill) against running all chains over the prompt, and the cost of switching
from 1 chain to all chains in the middle of decoding (Air: nothing to recompute; CoLM without Air
rebuilds the cache of the new chains), each against the prompt length.

    python -m benchmarks.experiments.air_speed [--prompt-tokens 256,512,1024,2048] [--quick]
    python -m benchmarks.experiments.air_speed --device cuda --dtype bfloat16

Models: the `small` preset's shape (8 layers, 4 chains of 2 query heads of 64, FFN 4 x 352), as
CoLM-Air (2 shared KV heads in chain 1) and as CoLM (1 KV head per chain), random weights (speed
does not depend on them; benchmarks/generate.py builds the same ones). The switch step is the decode step at which the schedule goes from 1 chain to all;
"steady" is the median of the all-chain steps after it. Repeats are interleaved, medians reported.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import interleaved, report
from benchmarks.experiments.common import figure, parse, parser, save_figure
from benchmarks.generate import colm_model, prefill
from colm_core.checkpoint import parse_dtype
from colm_core.generation import Sampling, stream_batch


def step_seconds(model, prompt: list[int], schedule, new_tokens: int) -> tuple[list[float], list[dict]]:
    """Seconds of every decode step (the first includes the prefill) and which segments recomputed the cache."""
    report_ = {}
    steps = stream_batch(model, [prompt], schedule, new_tokens, sampling=Sampling(), report=report_)
    seconds, start = [], time.perf_counter()
    for _ in steps:
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    return seconds, report_["schedule"]


def main() -> None:
    p = parser(__doc__, "air_speed", trains=False)
    p.add_argument("--prompt-tokens", default="256,512,1024,2048", help="comma-separated prompt lengths")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens decoded in the switching test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    args = parse(p, dict(prompt_tokens="16,32", new_tokens=4, repeats=1))
    lengths = [int(v) for v in args.prompt_tokens.split(",")]
    torch.manual_seed(0)
    dtype = parse_dtype(args.dtype)
    air, colm = (colm_model(is_air, max(lengths) + args.new_tokens).to(args.device, dtype) for is_air in (True, False))
    n = air.config.n_chains
    switch_at = args.new_tokens // 2
    schedule = [(0, 1), (switch_at, n)]

    points = []
    for length in lengths:
        prompt = torch.randint(0, 256, (length,)).tolist()
        runs = interleaved(
            {
                "air prefill chain 1": lambda: prefill(air, prompt, n, 1),
                f"air prefill {n} chains": lambda: prefill(air, prompt, n, n),
                "air switch": lambda: step_seconds(air, prompt, schedule, args.new_tokens),
                "colm switch": lambda: step_seconds(colm, prompt, schedule, args.new_tokens),
            },
            args.repeats,
        )
        point = {"prompt_tokens": length}
        for name in ("air prefill chain 1", f"air prefill {n} chains"):
            point[name] = statistics.median(seconds for seconds, _ in runs[name])
        point["same_first_token"] = runs["air prefill chain 1"][-1][1] == runs[f"air prefill {n} chains"][-1][1]
        for name in ("air switch", "colm switch"):
            point[f"{name} step"] = statistics.median(steps[switch_at] for steps, _ in runs[name])
            point[f"{name} steady"] = statistics.median(
                statistics.median(steps[switch_at + 1 :]) for steps, _ in runs[name]
            )
            point[f"{name} recomputed"] = any(s["recomputed"] for s in runs[name][-1][1])
        points.append(point)

    rows = [
        [
            pt["prompt_tokens"],
            pt["air prefill chain 1"],
            pt[f"air prefill {n} chains"],
            pt[f"air prefill {n} chains"] / pt["air prefill chain 1"],
            pt["same_first_token"],
            pt["air switch step"] * 1e3,
            pt["air switch steady"] * 1e3,
            pt["colm switch step"] * 1e3,
            pt["colm switch steady"] * 1e3,
        ]
        for pt in points
    ]
    plot(points, n, args)
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    report(
        f"CoLM-Air prefill and chain switching ({where}, {args.dtype}, median of {args.repeats})",
        [
            "prompt tokens",
            "TTFT chain 1 s",
            f"TTFT {n} chains s",
            "speed-up",
            "same token",
            "air switch step ms",
            "air steady ms",
            "colm switch step ms",
            "colm steady ms",
        ],
        rows,
        {"args": {k: str(v) for k, v in vars(args).items()}, "device": where, "points": points},
        args.out,
    )


def plot(points: list[dict], n: int, args) -> None:
    fig, (prefill_ax, switch_ax) = figure(2, "Q5: CoLM-Air prefill with chain 1, and switching 1 -> all chains")
    xs = [pt["prompt_tokens"] for pt in points]
    prefill_ax.plot(xs, [pt["air prefill chain 1"] for pt in points], marker="o", label="Air, prefill with chain 1")
    prefill_ax.plot(
        xs, [pt[f"air prefill {n} chains"] for pt in points], marker="o", label=f"Air, prefill with {n} chains"
    )
    prefill_ax.set_ylabel("time to first token, s")
    switch_ax.plot(xs, [pt["air switch step"] * 1e3 for pt in points], marker="o", label="Air: switch step")
    switch_ax.plot(
        xs, [pt["colm switch step"] * 1e3 for pt in points], marker="o", label="CoLM (own KV per chain): switch step"
    )
    switch_ax.plot(
        xs,
        [pt["air switch steady"] * 1e3 for pt in points],
        marker="o",
        linestyle="--",
        label=f"Air: a steady {n}-chain step",
    )
    switch_ax.set_ylabel("decode step, ms")
    switch_ax.set_yscale("log")
    for ax in (prefill_ax, switch_ax):
        ax.set_xlabel("prompt tokens")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
