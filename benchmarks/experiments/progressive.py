"""Question 3, progressive scaling: train a 1-chain model, expand it by one chain (`colm expand`) and
train the new chain with the first frozen (`--freeze-chains 1`) or everything unfrozen, against
training the same 2-chain CoLM from scratch: the compute (FLOPs and wall time) each needs to reach
the same held-out bits/byte. Also the reviewer's baseline: a function-preserving width growth of
the dense model (Net2Net-style: every hidden unit, head and FFN unit duplicated, weights reading a
duplicated input halved, a little noise to break the symmetry), trained for the same steps.

    python -m benchmarks.experiments.progressive [--base-steps 150] [--grow-steps 150] [--quick]

Compute of a grown model counts the base model's training. FLOPs are torch's count of one training
step (forward and backward; a frozen chain has no weight gradients) times the steps. The scratch
run trains for base + grow steps; "to reach" interpolates its held-out curve linearly in compute.
Every run uses `--chain-loss all` (with chain 1 frozen that is chain 2's loss only).
"""

from __future__ import annotations

import torch

from benchmarks.common import report
from benchmarks.experiments.common import (arm, curve, figure, held_out_ids, new_model, non_embedding_parameters,
                                           parse, parser, save_figure, train_options, train_run, train_step_flops)
from colm_core.api import load, save
from colm_core.init import InitOptions
from colm_core.model import CoLM
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
    wide = CoLM(cfg.replace(heads=[2 * cfg.heads[0]], kv_heads=[2 * cfg.kv_heads[0]], ffn=[2 * cfg.ffn[0]]))
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
    wide.tokenizer, wide.history = model.tokenizer, model.history
    return wide.eval()


def main() -> None:
    p = parser(__doc__, "progressive")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--heads", type=int, default=4, help="query heads of each chain")
    p.add_argument("--kv-heads", type=int, default=2, help="KV heads of each chain")
    p.add_argument("--ffn", type=int, default=176, help="FFN units of each chain")
    p.add_argument("--base-steps", type=int, default=150, help="steps of the 1-chain model")
    p.add_argument("--grow-steps", type=int, default=150, help="steps after growing")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--curve-points", type=int, default=4, help="held-out evaluations along each run")
    p.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens (bytes) per evaluation")
    p.add_argument("--net2net-noise", type=float, default=1e-3, help="std of the noise added to widened matrices")
    args = parse(p, dict(layers=1, base_steps=6, grow_steps=6, batch_size=4, seq_len=32, curve_points=2,
                         eval_tokens=512))
    args.steps = args.base_steps  # train_options' default steps
    ids = held_out_ids(args, ByteTokenizer())
    work = args.workdir
    init = InitOptions(heads=[args.heads], kv_heads=[args.kv_heads], ffn=[args.ffn], n_layers=args.layers,
                       head_dim=args.head_dim, max_seq_len=max(256, args.seq_len))

    def trained(key: str, start, steps: int, **options) -> dict:
        """Train START for `steps` steps into runs/KEY; its curve, FLOPs per step and parameters."""
        opts = train_options(args, steps=steps, chain_loss="all", **options)
        run_dir = train_run(start, work / "runs" / key, opts)
        model = load(run_dir)
        trainable = sum(p.numel() for name, p in model.named_parameters()
                        if int(name.rsplit(".", 1)[1]) + 1 > opts.freeze_chains)
        return {"curve": curve(run_dir, ids, args.seq_len), "step_flops": train_step_flops(start, opts), "steps": steps,
                "chains": model.config.n_chains, "non_embedding_parameters": non_embedding_parameters(model.config),
                "trainable_parameters": trainable}

    base_start = new_model(work / "init" / "base", init)
    base = arm(work, "base", lambda: trained("base", base_start, args.base_steps))
    grown_start = work / "init" / "grown"
    if not grown_start.exists():
        expand(work / "runs" / "base", grown_start, add_chains=1)

    def widened() -> dict:
        start = work / "init" / "net2net"
        if not start.exists():
            save(net2net_widen(load(work / "runs" / "base"), args.net2net_noise, seed=0), start)
        exact = net2net_widen(load(work / "runs" / "base"), 0.0, seed=0)
        probe = torch.tensor([ids[:64]])
        with torch.no_grad():
            error = (exact(probe) - load(work / "runs" / "base")(probe)).abs().max().item()
        return trained("net2net", start, args.grow_steps) | {"widening_max_logit_error": error}

    arms = {
        "base": base,
        "grown-frozen": arm(work, "grown-frozen",
                            lambda: trained("grown-frozen", grown_start, args.grow_steps, freeze_chains=1)),
        "grown-unfrozen": arm(work, "grown-unfrozen", lambda: trained("grown-unfrozen", grown_start, args.grow_steps)),
        "net2net": arm(work, "net2net", widened),
        "scratch": arm(work, "scratch", lambda: trained(
            "scratch", new_model(work / "init" / "scratch", InitOptions(**{**vars(init), "heads": [args.heads] * 2})),
            args.base_steps + args.grow_steps)),
    }
    base_flops = base["step_flops"] * base["steps"]
    base_seconds = base["curve"][-1]["seconds"]
    for name, a in arms.items():  # compute so far at every curve point, the base model's included
        offset_flops, offset_seconds = (0, 0.0) if name in ("base", "scratch") else (base_flops, base_seconds)
        for point in a["curve"]:
            point["flops"] = offset_flops + a["step_flops"] * point["step"]
            point["total_seconds"] = offset_seconds + point["seconds"]
            point["top_bits_per_byte"] = point["bits_per_byte"][str(a["chains"])]

    rows, summary = [], {}
    for name, a in arms.items():
        last = a["curve"][-1]
        reach = scratch_to_reach(arms["scratch"]["curve"], last["top_bits_per_byte"])
        summary[name] = {"bits_per_byte": last["top_bits_per_byte"], "chain_1_bits_per_byte": last["bits_per_byte"]["1"],
                         "flops": last["flops"], "seconds": last["total_seconds"], "scratch_to_reach": reach}
        rows.append([name, a["non_embedding_parameters"], a["trainable_parameters"], summary[name]["bits_per_byte"],
                     summary[name]["chain_1_bits_per_byte"] if a["chains"] > 1 else "-",
                     f"{last['flops'] / 1e12:.3f}", last["total_seconds"],
                     f"{reach['flops'] / 1e12:.3f}" if reach else "not reached",
                     reach["seconds"] if reach else "-"])
    plot(arms, args)
    report(f"held-out bits/byte ({args.val.name}) and compute; grown arms count the base model's "
           f"{args.base_steps} steps", ["arm", "non-embedding params", "trained params", "bits/byte",
                                        "chain 1 bits/byte", "TFLOPs", "seconds", "scratch TFLOPs to reach",
                                        "scratch s to reach"], rows,
           {"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "arms": arms}, args.out,
           notes=[f"Net2Net widening, largest logit change without noise: "
                  f"{arms['net2net']['widening_max_logit_error']:.2e}"])


def scratch_to_reach(points: list[dict], target: float) -> dict | None:
    """FLOPs and seconds at which the scratch run's held-out curve first reaches `target` (linear
    between curve points), or None if it never does."""
    previous = None
    for point in points:
        if point["top_bits_per_byte"] <= target:
            if previous is None:
                return {"flops": point["flops"], "seconds": point["total_seconds"]}
            f = (previous["top_bits_per_byte"] - target) / (previous["top_bits_per_byte"] - point["top_bits_per_byte"])
            return {key: previous[src] + f * (point[src] - previous[src])
                    for key, src in (("flops", "flops"), ("seconds", "total_seconds"))}
        previous = point
    return None


def plot(arms: dict, args) -> None:
    fig, (by_flops, by_time) = figure(2, "Q3: progressive scaling, grown vs trained from scratch")
    base_end = arms["base"]["curve"][-1]
    for name, a in arms.items():
        # a grown model starts where the base model ended: growth preserves its function
        points = a["curve"] if name in ("base", "scratch") else [base_end] + a["curve"]
        ys = [p["top_bits_per_byte"] for p in points]
        line, = by_flops.plot([p["flops"] / 1e12 for p in points], ys, marker="o", label=name)
        by_time.plot([p["total_seconds"] for p in points], ys, marker="o", label=name, color=line.get_color())
    by_flops.set_xlabel("training TFLOPs (base model's included)")
    by_time.set_xlabel("training wall time, s (base model's included; machine shared)")
    for ax in (by_flops, by_time):
        ax.set_ylabel(f"held-out bits/byte, whole model ({args.val.name})")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
