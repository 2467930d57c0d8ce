"""Peak memory of one training step's loss with a large vocabulary: every scale vs the last one.

Each mode runs in its own process and reports the growth of its peak resident memory over one
forward + backward (model and batch already built):

    full        colm's chunked loss, last scale only (the paper's pretraining)
    all         colm's chunked loss, every scale in one forward
    all-naive   every scale's full logits tensor, model.logits(h, k) per scale, summed CE

    PYTHONPATH=. python benchmarks/chain_loss_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MODES = ("full", "all", "all-naive")


def measure(mode: str, vocab: int, tokens: int, chains: int) -> float:
    """MiB of peak-RSS growth over one loss forward + backward."""
    import torch
    import torch.nn.functional as F

    from colm_core.config import ColmConfig
    from colm_core.losses import MultiScaleLoss
    from colm_core.model import CoLM

    torch.set_num_threads(1)
    cfg = ColmConfig(vocab_size=vocab, n_layers=1, head_dim=32, heads=[2] * chains, kv_heads=[1] * chains,
                     ffn=[64] * chains, max_seq_len=tokens, bos_token_id=0, eos_token_id=1)
    model = CoLM(cfg).init_weights(seed=0)
    ids = torch.randint(0, vocab, (1, tokens + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "all-naive":
        h = model.hidden_states(x)
        loss = sum(F.cross_entropy(model.logits(h, k).flatten(0, 1), y.flatten()) for k in range(1, chains + 1))
    else:
        scales = [chains] if mode == "full" else list(range(1, chains + 1))
        loss = MultiScaleLoss(model, scales)(x, y).sum()
    loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=128256)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in a child process
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "chain_loss_memory.json")
    args = p.parse_args()
    if args.mode:
        print(measure(args.mode, args.vocab_size, args.tokens, args.chains))
        return

    peak = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--vocab-size", str(args.vocab_size),
                              "--tokens", str(args.tokens), "--chains", str(args.chains)],
                             capture_output=True, text=True, check=True)
        peak[mode] = float(out.stdout.strip())
    logits_mib = args.tokens * args.vocab_size * 4 / 2**20
    print(f"loss peak memory growth, vocab {args.vocab_size}, {args.tokens} tokens, {args.chains} chains "
          f"(one float32 logits tensor: {logits_mib:.0f} MiB)")
    print(f"{'mode':<10} {'MiB':>8} {'vs full':>8}")
    for mode in MODES:
        print(f"{mode:<10} {peak[mode]:>8.0f} {peak[mode] / peak['full']:>7.2f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                       "logits_mib": logits_mib, "peak_growth_mib": peak}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
