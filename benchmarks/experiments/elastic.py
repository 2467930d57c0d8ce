"""Question 2, elastic inference: the held-out bits/byte of every k-chain sub-model of one 4-chain CoLM
trained on the full model's loss only (`--chain-loss full`) or on every scale's (`all`), next to
models of each sub-model's shape trained on their own (the "train each size separately" baseline
of MatFormer and SortedNet), and what each scale costs: parameters, forward FLOPs and time.

    python -m benchmarks.experiments.elastic [--steps 300] [--seeds 0,1,2] [--quick]

The separately trained k-chain models have exactly the k-chain sub-model's shape (k = 1 is a dense
Llama); the one for k = 4 is the `full` arm itself. Every run sees the same batches.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import interleaved_medians, report
from benchmarks.experiments.common import (
    arm,
    bits_per_byte,
    figure,
    forward_flops,
    held_out_ids,
    new_model,
    non_embedding_parameters,
    parse,
    parser,
    save_figure,
    train_options,
    train_run,
)
from colm_core.api import load
from colm_core.init import InitOptions
from colm_core.tokenizer import ByteTokenizer


def init_options(args, chains: int, seed: int) -> InitOptions:
    return InitOptions(
        heads=[args.heads] * chains,
        kv_heads=[args.kv_heads],
        ffn=[args.ffn],
        n_layers=args.layers,
        head_dim=args.head_dim,
        max_seq_len=max(256, args.seq_len),
        seed=seed,
    )


def main() -> None:
    p = parser(__doc__, "elastic")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--heads", type=int, default=2, help="query heads per chain")
    p.add_argument("--kv-heads", type=int, default=1, help="KV heads per chain")
    p.add_argument("--ffn", type=int, default=88, help="FFN units per chain")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--curve-points", type=int, default=3, help="step checkpoints along each run (for resuming)")
    p.add_argument("--time-tokens", type=int, default=256, help="sequence length of the timed forward")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the timed forward")
    args = parse(p, dict(chains=2, steps=6, time_tokens=32, repeats=1))
    ids = held_out_ids(args, ByteTokenizer())
    n = args.chains

    # arm -> (chains of the model, chain loss)
    arms = {"full": (n, "full"), "all": (n, "all"), **{f"separate-{k}": (k, "full") for k in range(1, n)}}
    results = {}
    for name, (chains, chain_loss) in arms.items():
        for seed in args.seeds:

            def run(chains=chains, chain_loss=chain_loss, seed=seed, key=f"{name}-seed{seed}"):
                start = new_model(args.workdir / "init" / key, init_options(args, chains, seed))
                run_dir = train_run(
                    start, args.workdir / "runs" / key, train_options(args, chain_loss=chain_loss, seed=seed)
                )
                return {
                    "arm": name,
                    "seed": seed,
                    "chains": chains,
                    "chain_loss": chain_loss,
                    "bits_per_byte": {
                        str(k): v for k, v in bits_per_byte(run_dir, ids, args.seq_len, device=args.device).items()
                    },
                }

            results.setdefault(name, []).append(arm(args.workdir, f"{name}-seed{seed}", run))

    def mean_bpb(name: str, k: int) -> float:
        return statistics.mean(r["bits_per_byte"][str(k)] for r in results[name])

    def spread(name: str, k: int) -> float:
        values = [r["bits_per_byte"][str(k)] for r in results[name]]
        return max(values) - min(values)

    model = load(args.workdir / "runs" / f"all-seed{args.seeds[0]}")
    cfg = model.config
    batch = torch.randint(0, 256, (8, args.time_tokens))
    with torch.no_grad():
        seconds = interleaved_medians({k: (lambda k=k: model(batch, k)) for k in range(1, n + 1)}, args.repeats)
    rows, scales = [], []
    for k in range(1, n + 1):
        separate = "full" if k == n else f"separate-{k}"
        scale = {
            "chains": k,
            "non_embedding_parameters": non_embedding_parameters(cfg, k),
            "forward_flops_per_token": forward_flops(model, args.time_tokens, k) / args.time_tokens,
            "forward_seconds": seconds[k],
            "full": mean_bpb("full", k),
            "all": mean_bpb("all", k),
            "separate": mean_bpb(separate, k),
            "spread": max(spread("full", k), spread("all", k), spread(separate, k)),
        }
        scales.append(scale)
        rows.append(
            [
                k,
                scale["non_embedding_parameters"],
                f"{scale['forward_flops_per_token'] / 1e6:.2f}M",
                scale["forward_seconds"] * 1e3,
                scale["full"],
                scale["all"],
                scale["separate"],
                scale["spread"],
            ]
        )
    plot(scales, args)
    report(
        f"held-out bits/byte of each k-chain sub-model, {args.steps} steps, {len(args.seeds)} seed(s), {args.val.name}; "
        f"forward of 8 x {args.time_tokens} tokens",
        [
            "chains",
            "non-embedding params",
            "fwd FLOPs/token",
            "fwd ms",
            "full loss",
            "all scales",
            "separate",
            "seed spread",
        ],
        rows,
        {"args": {k: str(v) for k, v in vars(args).items()}, "scales": scales, "runs": results},
        args.out,
    )


def plot(scales: list[dict], args) -> None:
    fig, (quality, cost) = figure(2, "Q2: elastic inference, one 4-chain CoLM vs each size trained alone")
    ks = [s["chains"] for s in scales]
    for key, label in (
        ("full", "one model, --chain-loss full"),
        ("all", "one model, --chain-loss all"),
        ("separate", "each size trained separately"),
    ):
        quality.plot(ks, [s[key] for s in scales], marker="o", label=label)
    quality.set_xlabel("chains used (sub-model)")
    quality.set_ylabel(f"held-out bits/byte ({args.val.name})")
    quality.set_xticks(ks)
    quality.legend()
    cost.bar([str(k) for k in ks], [s["forward_seconds"] * 1e3 for s in scales])
    cost.set_xlabel("chains used (sub-model)")
    cost.set_ylabel(f"forward ms, 8 x {args.time_tokens} tokens (machine shared)")
    for ax in (quality, cost):
        ax.grid(alpha=0.3)
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
