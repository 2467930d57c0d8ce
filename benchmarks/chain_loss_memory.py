"""Peak memory of one training step's loss with a large vocabulary: every scale vs the last one.

Each mode runs in its own process and reports the growth of its peak resident memory over one
forward + backward (model and batch already built):

    full        colm's chunked loss, last scale only (the paper's pretraining)
    all         colm's chunked loss, every scale in one forward
    all-naive   every scale's full logits tensor, model.logits(h, k) per scale, summed CE

    python -m benchmarks.chain_loss_memory [--vocab-size 128256] [--tokens 512] [--chains 4]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

from benchmarks.common import parser, report, set_threads

MODES = ("full", "all", "all-naive")
REPO = Path(__file__).resolve().parent.parent  # where `-m benchmarks.chain_loss_memory` resolves


def measure(mode: str, vocab: int, tokens: int, chains: int) -> float:
    """MiB of peak-RSS growth over one loss forward + backward."""
    import torch.nn.functional as F

    from benchmarks.loss import model_and_batch
    from colm_core.losses import MultiScaleLoss

    model, x, y = model_and_batch(vocab, tokens, chains)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "all-naive":
        h = model.hidden_states(x)
        loss = sum(F.cross_entropy(model.logits(h, k).flatten(0, 1), y.flatten()) for k in range(1, chains + 1))
    else:
        scales = [chains] if mode == "full" else list(range(1, chains + 1))
        loss = MultiScaleLoss(model, scales)(x, y).total
    loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    p = parser(__doc__, "chain_loss_memory", threads=1)
    p.add_argument("--vocab-size", type=int, default=128256)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = p.parse_args()
    if args.mode:
        set_threads(args.threads)
        print(measure(args.mode, args.vocab_size, args.tokens, args.chains))
        return

    peak = {}
    for mode in MODES:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.chain_loss_memory",
                "--mode",
                mode,
                "--vocab-size",
                str(args.vocab_size),
                "--tokens",
                str(args.tokens),
                "--chains",
                str(args.chains),
                "--threads",
                str(args.threads),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        peak[mode] = float(out.stdout.strip())
    logits_mib = args.tokens * args.vocab_size * 4 / 2**20
    report(
        f"loss peak memory growth, vocab {args.vocab_size}, {args.tokens} tokens, {args.chains} chains "
        f"(one float32 logits tensor: {logits_mib:.0f} MiB)",
        ["mode", "MiB", "vs full"],
        [[mode, f"{peak[mode]:.0f}", f"{peak[mode] / peak['full']:.2f}x"] for mode in MODES],
        {"args": {k: str(v) for k, v in vars(args).items()}, "logits_mib": logits_mib, "peak_growth_mib": peak},
        args.out,
    )


if __name__ == "__main__":
    main()
