"""Cross-entropy of several k-chain sub-models from one forward pass (docs/spec.md section 3, Loss).

logits_k = sum_{i<=k} h_i H_i^T, so scale k's logits are scale k-1's plus one more block product.
For a chunk of rows we build the logits chain by chain and take the CE of every requested scale
as we pass it. With a large vocabulary the chunks are small and each one is recomputed in the
backward pass (activation checkpointing), so training every scale holds about one chunk of logits
at a time instead of one full (tokens, vocab) tensor per scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGITS_PER_CHUNK = 2**24  # elements of one chunk's logits: 64 MiB in float32


def chain_cross_entropy(h: torch.Tensor, head_blocks: list[torch.Tensor], targets: torch.Tensor,
                        scales: list[int]) -> torch.Tensor:
    """Summed CE of each scale in `scales` (ascending) over rows h (N, D) -> (len(scales),), at least float32."""
    sums, logits, start = [], None, 0
    for k, block in enumerate(head_blocks, start=1):
        part = F.linear(h[:, start : start + block.shape[1]], block)
        logits = part if logits is None else logits + part
        start += block.shape[1]
        if k in scales:
            full_precision = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits under autocast
            sums.append(F.cross_entropy(full_precision, targets, reduction="sum"))
    return torch.stack(sums)


class MultiScaleLoss(nn.Module):
    """A CoLM whose forward returns the summed next-token CE of every chosen scale.

    This is the module DDP/FSDP wrap: their hooks run on forward(), so the whole loss, LM head
    included, must be inside one forward call.
    """

    def __init__(self, model: nn.Module, scales: list[int]):
        super().__init__()
        self.model = model
        self.scales = sorted(scales)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor, scales: list[int] | None = None) -> torch.Tensor:
        """(B, T) inputs and targets -> (len(scales),) summed CE per scale (divide by B * T for the mean)."""
        scales = sorted(scales or self.scales)
        top = scales[-1]
        h = self.model.hidden_states(ids, top).flatten(0, 1)
        y = targets.flatten()
        blocks = self.model.head_blocks(top)
        rows = max(1, LOGITS_PER_CHUNK // self.model.config.vocab_size)
        if len(y) <= rows:
            return chain_cross_entropy(h, blocks, y, scales)
        total = 0
        for s in range(0, len(y), rows):
            total = total + checkpoint(chain_cross_entropy, h[s : s + rows], blocks, y[s : s + rows], scales,
                                       use_reentrant=False)
        return total
