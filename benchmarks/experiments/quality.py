"""Question 1, quality at equal budget: a dense model (1 chain) against CoLM with 2 and 4 chains and
CoLM-Air (4 chains, keys and values from chain 1), at matched non-embedding parameters and matched
training tokens. Held-out bits/byte against training tokens and against wall time.

    python -m benchmarks.experiments.quality [--steps 300] [--seeds 0,1,2] [--quick]

Every model has the same hidden width, head width and layers; a CoLM's chain linears hold (n+1)/(2n)
of a dense layer's weights, so each CoLM gets the FFN width per chain that brings its non-embedding
parameters to the dense model's (within one FFN unit per chain). Every arm trains the full model's
loss only (`--chain-loss full`, the dense model's objective) on the same batches.
"""

from __future__ import annotations

import statistics

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
)
from colm_core.init import InitOptions, build_config
from colm_core.tokenizer import ByteTokenizer


# name -> (query heads per chain, KV heads per chain, CoLM-Air), for a hidden width of --heads heads.
def arms(heads: int) -> dict[str, tuple[list[int], list[int], bool]]:
    return {
        "dense": ([heads], [heads // 2], False),
        "colm-2": ([heads // 2] * 2, [heads // 4] * 2, False),
        "colm-4": ([heads // 4] * 4, [heads // 8] * 4, False),
        "air-4": ([heads // 4] * 4, [heads // 4, 0, 0, 0], True),
    }


def matched_ffn(args, heads: list[int], kv_heads: list[int], air: bool, target: int) -> int:
    """The FFN units per chain that bring the non-embedding parameters closest to `target`
    (they grow linearly with it)."""

    def params(ffn: int) -> int:
        return non_embedding_parameters(build_config(init_options(args, heads, kv_heads, air, ffn, 0))[0])

    per_unit = params(2) - params(1)
    return max(1, round((target - params(1)) / per_unit) + 1)


def init_options(args, heads, kv_heads, air, ffn, seed) -> InitOptions:
    return InitOptions(
        heads=heads,
        kv_heads=kv_heads,
        air=air,
        ffn=[ffn],
        n_layers=args.layers,
        head_dim=args.head_dim,
        max_seq_len=max(256, args.seq_len),
        seed=seed,
    )


def main() -> None:
    p = parser(__doc__, "quality")
    p.add_argument("--heads", type=int, default=8, help="query heads of the whole width (a multiple of 8)")
    p.add_argument("--ffn", type=int, default=352, help="FFN units of the dense model")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--curve-points", type=int, default=5, help="held-out evaluations along each run")
    args = parse(p, dict(steps=6))
    ids = held_out_ids(args, ByteTokenizer())
    dense_cfg = build_config(init_options(args, [args.heads], [args.heads // 2], False, args.ffn, 0))[0]
    target = non_embedding_parameters(dense_cfg)

    results = {}
    for name, (heads, kv_heads, air) in arms(args.heads).items():
        ffn = args.ffn if name == "dense" else matched_ffn(args, heads, kv_heads, air, target)
        for seed in args.seeds:

            def run(heads=heads, kv_heads=kv_heads, air=air, ffn=ffn, seed=seed, key=f"{name}-seed{seed}"):
                opts = init_options(args, heads, kv_heads, air, ffn, seed)
                start = new_model(args.workdir / "init" / key, opts)
                run_dir = train_run(
                    start, args.workdir / "runs" / key, train_options(args, chain_loss="full", seed=seed)
                )
                cfg = build_config(opts)[0]
                points = curve(run_dir, ids, args.seq_len, [cfg.n_chains], args.device)
                return {
                    "arm": name,
                    "seed": seed,
                    "heads": heads,
                    "kv_heads": kv_heads,
                    "air": air,
                    "ffn_per_chain": ffn,
                    "non_embedding_parameters": non_embedding_parameters(cfg),
                    "curve": points,
                    "bits_per_byte": list(points[-1]["bits_per_byte"].values())[0],
                    "tokens": points[-1]["tokens"],
                    "seconds": points[-1]["seconds"],
                }

            results.setdefault(name, []).append(arm(args.workdir, f"{name}-seed{seed}", run))

    rows, summary = [], {}
    for name, runs in results.items():
        bpb = [r["bits_per_byte"] for r in runs]
        summary[name] = {
            "bits_per_byte_mean": statistics.mean(bpb),
            "bits_per_byte_min": min(bpb),
            "bits_per_byte_max": max(bpb),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs),
        }
        rows.append(
            [
                name,
                runs[0]["non_embedding_parameters"],
                f"{runs[0]['heads']}",
                runs[0]["ffn_per_chain"],
                runs[0]["tokens"],
                summary[name]["bits_per_byte_mean"],
                summary[name]["bits_per_byte_max"] - summary[name]["bits_per_byte_min"],
                summary[name]["seconds_mean"],
            ]
        )
    plot(results, args)
    report(
        f"held-out bits/byte after {args.steps} steps, {len(args.seeds)} seed(s), {args.val.name}",
        ["arm", "non-embedding params", "heads per chain", "FFN per chain", "tokens", "bits/byte", "spread", "train s"],
        rows,
        {"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "runs": results},
        args.out,
    )


def plot(results: dict, args) -> None:
    fig, (by_tokens, by_time) = figure(2, "Q1: quality at matched parameters and tokens")
    for name, runs in results.items():
        per_seed = []
        for r in runs:
            ys = [list(p["bits_per_byte"].values())[0] for p in r["curve"]]
            per_seed.append([([p["tokens"] for p in r["curve"]], ys), ([p["seconds"] for p in r["curve"]], ys)])
        plot_seeds([by_tokens, by_time], name, per_seed)
    by_tokens.set_xlabel("training tokens")
    by_time.set_xlabel(f"training wall time (s, {args.device})")
    for ax in (by_tokens, by_time):
        ax.set_ylabel(f"held-out bits/byte ({args.val.name})")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, args.plot)


if __name__ == "__main__":
    main()
