"""Question 3, progressive scaling: train a 1-chain model, expand it by one chain (`colm expand`) and
train the new chain with the first frozen (`--freeze-chains 1`) or everything unfrozen, against
training the same 2-chain CoLM from scratch: the compute (FLOPs and wall time) each needs to reach
the same held-out bits/byte. Also the reviewer's baseline: a function-preserving width growth of
the dense model (Net2Net-style: every hidden unit, head and FFN unit duplicated, weights reading a
duplicated input halved, a little noise to break the symmetry), trained for the same steps; and the
reviewer's ablation: block-diagonal growth, a new chain that reads nothing from the old one
(`colm train --block-diagonal 1`), frozen and unfrozen.

    python -m benchmarks.experiments.progressive [--base-steps 150] [--grow-steps 150] [--seeds 0,1,2] [--quick]

Compute of a grown model counts the base model's training. FLOPs are torch's count of one training
step (forward and backward; a frozen chain has no weight gradients; a block-diagonal chain's zero
blocks are still multiplied, as colm computes them) times the steps. The scratch
run trains for base + grow steps; "to reach" interpolates its held-out curve linearly in compute.
Every run uses `--chain-loss all` (with chain 1 frozen that is chain 2's loss only).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from benchmarks.common import report
from benchmarks.experiments.common import (
    arm,
    curve,
    figure,
    held_out_ids,
    new_model,
    non_embedding_parameters,
    parse,
    parser,
    plot_seeds,
    save_figure,
    train_options,
    train_run,
    train_step_flops,
)
from colm_core.api import load, save
from colm_core.init import InitOptions
from colm_core.model import CoLM, chain_of, lateral_blocks
from colm_core.surgery import expand
from colm_core.tokenizer import ByteTokenizer


def net2net_widen(model: CoLM, noise: float, seed: int) -> CoLM:
    """The 1-chain model at twice the width computing the same function (before the noise).

    The wide residual stream is [x, x]: RMSNorm statistics are unchanged, query and KV heads come
    twice in the same order (so head j + H reads KV head j // group + KV, the copy of its own), FFN
    units twice. A matrix (out, in) becomes [[W, W], [W, W]] / 2: both copies of its output read
    both copies of its input. Embeddings write both copies; the LM head reads both, halved."""
    cfg = model.config
    assert cfg.n_chains == 1, "Net2Net widening here is for a dense (1-chain) model"
    wide = CoLM(
        cfg.replace(heads=[2 * cfg.heads[0]], kv_heads=[2 * cfg.kv_heads[0]], ffn=[2 * cfg.ffn[0]]),
        model.tokenizer,
        model.history,
    )
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, w in model.state_dict().items():
        if name.startswith("embed."):
            v = torch.cat([w, w], 1)
        elif w.ndim == 1:  # norm gains
            v = torch.cat([w, w])
        elif name.startswith("lm_head."):
            v = torch.cat([w, w], 1) / 2
        else:
            v = torch.cat([torch.cat([w, w], 1)] * 2, 0) / 2
        state[name] = v + noise * torch.randn(v.shape, generator=g) if w.ndim == 2 else v
    wide.load_state_dict(state)
    return wide.eval()


# arm -> (starts from the grown model, --freeze-chains, --block-diagonal)
GROWN_ARMS = {
    "grown-frozen": (1, 0),
    "grown-unfrozen": (0, 0),
    "block-diagonal-frozen": (1, 1),
    "block-diagonal-unfrozen": (0, 1),
}


def main() -> None:
    p = parser(__doc__, "progressive")
    p.add_argument("--heads", type=int, default=4, help="query heads of each chain")
    p.add_argument("--kv-heads", type=int, default=2, help="KV heads of each chain")
    p.add_argument("--ffn", type=int, default=176, help="FFN units of each chain")
    p.add_argument("--base-steps", type=int, default=150, help="steps of the 1-chain model")
    p.add_argument("--grow-steps", type=int, default=150, help="steps after growing")
    p.add_argument("--curve-points", type=int, default=4, help="held-out evaluations along each run")
    p.add_argument("--net2net-noise", type=float, default=1e-3, help="std of the noise added to widened matrices")
    args = parse(p, dict(base_steps=6, grow_steps=6))
    args.steps = args.base_steps  # train_options' default steps
    ids = held_out_ids(args, ByteTokenizer())
    runs = {}
    for seed in args.seeds:
        for name, result in seed_arms(args, ids, seed).items():
            runs.setdefault(name, []).append(result)

    rows, summary = [], {}
    for name, per_seed in runs.items():
        last = [r["curve"][-1] for r in per_seed]
        bpb = [point["top_bits_per_byte"] for point in last]
        reach = [scratch_to_reach(scratch["curve"], b) for scratch, b in zip(runs["scratch"], bpb)]
        reached = [r for r in reach if r]
        summary[name] = {
            "bits_per_byte": statistics.mean(bpb),
            "spread": max(bpb) - min(bpb),
            "chain_1_bits_per_byte": statistics.mean(point["bits_per_byte"]["1"] for point in last),
            "flops": statistics.mean(point["flops"] for point in last),
            "seconds": statistics.mean(point["total_seconds"] for point in last),
            "scratch_to_reach": {key: statistics.mean(r[key] for r in reached) for key in ("flops", "seconds")}
            if len(reached) == len(reach)
            else None,
        }
        first, s = per_seed[0], summary[name]
        rows.append(
            [
                name,
                first["non_embedding_parameters"],
                first["trainable_parameters"],
                s["bits_per_byte"],
                s["spread"],
                s["chain_1_bits_per_byte"] if first["chains"] > 1 else "-",
                f"{s['flops'] / 1e12:.3f}",
                s["seconds"],
                f"{s['scratch_to_reach']['flops'] / 1e12:.3f}"
                if s["scratch_to_reach"]
                else f"not reached ({len(reach) - len(reached)} of {len(reach)} seeds)",
                s["scratch_to_reach"]["seconds"] if s["scratch_to_reach"] else "-",
            ]
        )
    plot(runs, args)
    errors = [r["widening_max_logit_error"] for r in runs["net2net"]]
    report(
        f"held-out bits/byte ({args.val.name}) and compute, mean of {len(args.seeds)} seed(s) (spread: max - min); "
        f"grown arms count the base model's {args.base_steps} steps",
        [
            "arm",
            "non-embedding params",
            "trained params",
            "bits/byte",
            "spread",
            "chain 1 bits/byte",
            "TFLOPs",
            "seconds",
            "scratch TFLOPs to reach",
            "scratch s to reach",
        ],
        rows,
        {"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "arms": runs},
        args.out,
        notes=[f"Net2Net widening, largest logit change without noise: {max(errors):.2e}"],
    )


def seed_arms(args, ids: list[int], seed: int) -> dict[str, dict]:
    """Every arm trained from one seed's base model; compute at each curve point counts the base model's."""
    work, tag = args.workdir, f"seed{seed}"
    init = InitOptions(
        heads=[args.heads],
        kv_heads=[args.kv_heads],
        ffn=[args.ffn],
        n_layers=args.layers,
        head_dim=args.head_dim,
        max_seq_len=max(256, args.seq_len),
        seed=seed,
    )

    def trained(key: str, start, steps: int, **options) -> dict:
        """Train START for `steps` steps into runs/KEY; its curve, FLOPs per step and parameters."""
        opts = train_options(args, steps=steps, chain_loss="all", seed=seed, **options)
        run_dir = train_run(start, work / "runs" / key, opts)
        model = load(run_dir)
        trainable = sum(p.numel() for name, p in model.named_parameters() if chain_of(name) > opts.freeze_chains)
        if opts.block_diagonal:  # the zero blocks by which the new chain would read the old one
            trainable -= sum(w.shape[0] * columns for w, columns in lateral_blocks(model, opts.block_diagonal))
        return {
            "seed": seed,
            "curve": curve(run_dir, ids, args.seq_len, device=args.device),
            "step_flops": train_step_flops(start, opts),
            "steps": steps,
            "chains": model.config.n_chains,
            "non_embedding_parameters": non_embedding_parameters(model.config),
            "trainable_parameters": trainable,
        }

    base_run = work / "runs" / f"base-{tag}"
    base = arm(
        work,
        f"base-{tag}",
        lambda: trained(f"base-{tag}", new_model(work / "init" / f"base-{tag}", init), args.base_steps),
    )

    def grown_start() -> Path:
        start = work / "init" / f"grown-{tag}"
        if not start.exists():
            expand(base_run, start, add_chains=1, seed=seed)
        return start

    def widened() -> dict:
        start = work / "init" / f"net2net-{tag}"
        if not start.exists():
            save(net2net_widen(load(base_run), args.net2net_noise, seed=seed), start)
        exact = net2net_widen(load(base_run), 0.0, seed=seed)
        probe = torch.tensor([ids[:64]])
        with torch.no_grad():
            error = (exact(probe) - load(base_run)(probe)).abs().max().item()
        return trained(f"net2net-{tag}", start, args.grow_steps) | {"widening_max_logit_error": error}

    arms = {"base": base}
    for name, (freeze, block_diagonal) in GROWN_ARMS.items():
        arms[name] = arm(
            work,
            f"{name}-{tag}",
            lambda name=name, freeze=freeze, block_diagonal=block_diagonal: trained(
                f"{name}-{tag}", grown_start(), args.grow_steps, freeze_chains=freeze, block_diagonal=block_diagonal
            ),
        )
    arms["net2net"] = arm(work, f"net2net-{tag}", widened)
    scratch_init = InitOptions(**{**vars(init), "heads": [args.heads] * 2})
    arms["scratch"] = arm(
        work,
        f"scratch-{tag}",
        lambda: trained(
            f"scratch-{tag}",
            new_model(work / "init" / f"scratch-{tag}", scratch_init),
            args.base_steps + args.grow_steps,
        ),
    )

    base_flops = base["step_flops"] * base["steps"]
    base_seconds = base["curve"][-1]["seconds"]
    for name, a in arms.items():  # compute so far at every curve point, the base model's included
        offset_flops, offset_seconds = (0, 0.0) if name in ("base", "scratch") else (base_flops, base_seconds)
        for point in a["curve"]:
            point["flops"] = offset_flops + a["step_flops"] * point["step"]
            point["total_seconds"] = offset_seconds + point["seconds"]
            point["top_bits_per_byte"] = point["bits_per_byte"][str(a["chains"])]
    return arms


def scratch_to_reach(points: list[dict], target: float) -> dict | None:
    """FLOPs and seconds at which the scratch run's held-out curve first reaches `target` (linear
    between curve points), or None if it never does."""
    previous = None
    for point in points:
        if point["top_bits_per_byte"] <= target:
            if previous is None:
                return {"flops": point["flops"], "seconds": point["total_seconds"]}
            f = (previous["top_bits_per_byte"] - target) / (previous["top_bits_per_byte"] - point["top_bits_per_byte"])
            return {
                key: previous[src] + f * (point[src] - previous[src])
                for key, src in (("flops", "flops"), ("seconds", "total_seconds"))
            }
        previous = point
    return None


def plot(runs: dict, args) -> None:
    fig, (by_flops, by_time) = figure(2, "Q3: progressive scaling, grown vs trained from scratch")
    for name, per_seed in runs.items():
        lines = []
        for seed, a in enumerate(per_seed):
            # a grown model starts where its base model ended: growth preserves its function
            base_end = runs["base"][seed]["curve"][-1]
            points = a["curve"] if name in ("base", "scratch") else [base_end] + a["curve"]
            ys = [p["top_bits_per_byte"] for p in points]
            lines.append([([p["flops"] / 1e12 for p in points], ys), ([p["total_seconds"] for p in points], ys)])
        plot_seeds([by_flops, by_time], name, lines)
    by_flops.set_xlabel("training TFLOPs (base model's included)")
    by_time.set_xlabel(f"training wall time, s (base model's included; {args.device})")
    for ax in (by_flops, by_time):
        ax.set_ylabel(f"held-out bits/byte, whole model ({args.val.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
