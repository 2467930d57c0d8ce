"""The training loss's forward + backward with a large vocabulary: colm's fused multi-scale loss vs a
plain materialised cross-entropy and vs the chunked, checkpointed loss it replaced.

Every arm is a whole 1-layer model's fwd+bwd over the same tokens, so only the loss differs:

    materialised   each trained scale's whole (tokens, vocab) logits, model.logits(h, k), F.cross_entropy
    checkpointed   the loss before the fused one: 2^24-logit chunks under activation checkpointing
    fused          colm_core.losses.MultiScaleLoss

Each arm runs in its own processes (one per round, rounds interleaved across arms): after a 16-token
warm-up, the first call gives the growth of peak resident memory over one fwd+bwd (model and batch
already built), the others are timed; the medians are reported.

    python -m benchmarks.loss [--vocab-size 65536] [--tokens 2048] [--scales full|all] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from benchmarks.common import parser, report, set_threads

ARMS = ("materialised", "checkpointed", "fused")
REPO = Path(__file__).resolve().parent.parent
CHECKPOINTED_LOGITS_PER_CHUNK = 2**24


def checkpointed_chunk(h, head_blocks, targets, scales):
    """The replaced loss's chunk: summed CE of each scale, logits built chain by chain."""
    sums, logits, start = [], None, 0
    for k, block in enumerate(head_blocks, start=1):
        part = F.linear(h[:, start : start + block.shape[1]], block)
        logits = part if logits is None else logits + part
        start += block.shape[1]
        if k in scales:
            sums.append(
                F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="sum")
            )
    return torch.stack(sums)


def checkpointed_head_loss(h, blocks, y, scales):
    """The replaced loss on hidden rows h (N, D): chunks of 2^24 logits, each recomputed in the backward pass."""
    rows = max(1, CHECKPOINTED_LOGITS_PER_CHUNK // blocks[0].shape[0])
    return sum(
        checkpoint(checkpointed_chunk, h[s : s + rows], blocks, y[s : s + rows], scales, use_reentrant=False)
        for s in range(0, len(y), rows)
    )


def checkpointed_loss(model, ids, targets, scales):
    """The replaced MultiScaleLoss."""
    h = model.hidden_states(ids, scales[-1]).flatten(0, 1)
    return checkpointed_head_loss(h, model.head_blocks(scales[-1]), targets.flatten(), scales)


def materialised_loss(model, ids, targets, scales):
    h = model.hidden_states(ids, scales[-1])
    return torch.stack(
        [F.cross_entropy(model.logits(h, k).flatten(0, 1).float(), targets.flatten(), reduction="sum") for k in scales]
    )


def loss_fn(arm: str, model, scales):
    """(ids, targets) -> the scalar to differentiate: the summed CE of every scale."""
    if arm == "fused":
        from colm_core.losses import MultiScaleLoss

        module = MultiScaleLoss(model, scales)
        return lambda x, y: module(x, y).total
    arm_loss = materialised_loss if arm == "materialised" else checkpointed_loss
    return lambda x, y: arm_loss(model, x, y, scales).sum()


def model_and_batch(vocab: int, tokens: int, chains: int):
    from colm_core.config import ColmConfig
    from colm_core.model import CoLM

    cfg = ColmConfig(
        vocab_size=vocab,
        n_layers=1,
        head_dim=32,
        heads=[2] * chains,
        kv_heads=[1] * chains,
        ffn=[64] * chains,
        max_seq_len=tokens,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = CoLM(cfg).init_weights(seed=0).train()
    ids = torch.randint(0, vocab, (1, tokens + 1), generator=torch.Generator().manual_seed(0))
    return model, ids[:, :-1], ids[:, 1:]


def measure(arm: str, vocab: int, tokens: int, chains: int, scales: list[int], repeats: int) -> dict:
    """Peak-RSS growth (MiB) of the first fwd+bwd, then the seconds of `repeats` more, and the loss."""
    model, x, y = model_and_batch(vocab, tokens, chains)
    loss = loss_fn(arm, model, scales)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        total = loss(x, y)
        total.backward()
        return total.item()

    loss(x[:, :16], y[:, :16]).backward()  # libraries' first-call setup, outside the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    value = step()
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"peak_growth_mib": peak, "seconds": seconds, "loss": value}


def main() -> None:
    p = parser(__doc__, "loss", threads=1)
    p.add_argument("--vocab-size", type=int, default=65536)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument(
        "--scales", choices=("full", "all"), default="full", help="train the full model's loss only, or every scale's"
    )
    p.add_argument("--rounds", type=int, default=2, help="processes per arm, interleaved across arms")
    p.add_argument("--repeats", type=int, default=1, help="timed fwd+bwd per process, after the measured first")
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one process's measurement
    args = p.parse_args()
    set_threads(args.threads)
    scales = [args.chains] if args.scales == "full" else list(range(1, args.chains + 1))
    if args.arm:
        print(json.dumps(measure(args.arm, args.vocab_size, args.tokens, args.chains, scales, args.repeats)))
        return

    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.loss",
                    "--arm",
                    arm,
                    "--vocab-size",
                    str(args.vocab_size),
                    "--tokens",
                    str(args.tokens),
                    "--chains",
                    str(args.chains),
                    "--scales",
                    args.scales,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[arm].append(json.loads(out.stdout))
    seconds = {arm: statistics.median(s for r in runs[arm] for s in r["seconds"]) for arm in ARMS}
    peak = {arm: statistics.median(r["peak_growth_mib"] for r in runs[arm]) for arm in ARMS}
    base = "materialised"
    rows = [
        [
            arm,
            f"{seconds[arm]:.2f}",
            f"{seconds[base] / seconds[arm]:.2f}x",
            f"{peak[arm]:.0f}",
            f"{peak[arm] / peak[base]:.2f}x",
            f"{runs[arm][0]['loss']:.6g}",
        ]
        for arm in ARMS
    ]
    logits_mib = args.tokens * args.vocab_size * 4 / 2**20
    report(
        f"loss fwd+bwd, 1-layer {args.chains}-chain model, vocab {args.vocab_size}, {args.tokens} tokens, "
        f"scales {scales}, {args.threads} thread(s) (one float32 logits tensor: {logits_mib:.0f} MiB)",
        ["arm", "seconds", "speed vs materialised", "peak MiB", "memory vs materialised", "loss"],
        rows,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "scales": scales,
            "seconds": seconds,
            "peak_growth_mib": peak,
            "speed_vs_materialised": {a: seconds[base] / seconds[a] for a in ARMS},
            "memory_vs_materialised": {a: peak[a] / peak[base] for a in ARMS},
            "runs": runs,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
