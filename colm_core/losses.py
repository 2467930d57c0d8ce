"""Cross-entropy of several k-chain sub-models from one forward pass (docs/spec.md section 3, Loss).

logits_k = sum_{i<=k} h_i H_i^T, so scale k's logits are scale k-1's plus one more block product.
The loss is fused with its gradient, as Liger-Kernel's fused linear cross-entropy is: for a chunk
of rows we build the logits chain by chain, take the CE of every requested scale as we pass it,
and at once its logits' gradient dZ_k = w_k (softmax(logits_k) - onehot(target)) for the weighted
total sum_k w_k CE_k. Chain i's block feeds every scale k >= i, so its logits' gradient is the
suffix sum D_i = sum_{k>=i} dZ_k, and then

    dh_i = D_i H_i        dH_i += D_i^T h_i   (accumulated in float32 over the chunks)

Nothing is recomputed: the backward pass only scales the stored gradients by the incoming one.
No (tokens, vocab) tensor is ever whole: a chunk's logits and their gradients take at most as much
memory as the head itself in the compute dtype (or LOSS_CHUNK_BYTES, if more): the loss this replaced
summed the head's gradient chunk by chunk in a buffer that large, which the float32 accumulator here
does not need, since it becomes the gradient. The head is cast to the compute dtype (autocast's) once
per call, not once per chunk.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import NamedTuple

import torch
import torch.nn as nn

LOSS_CHUNK_BYTES = 2**26  # the least working memory of a chunk, its logits and their gradients: 64 MiB


class ScaleLosses(NamedTuple):
    total: torch.Tensor  # sum_k weights_k * CE_k: the one to differentiate
    per_scale: torch.Tensor  # (len(scales),) summed CE of each scale, at least float32; carries no gradient


def compute_dtype(h: torch.Tensor, blocks: list[torch.Tensor]) -> torch.dtype:
    """The dtype of the head's GEMMs: autocast's where it is on (as it would cast F.linear), else the operands'."""
    dtype = torch.promote_types(h.dtype, blocks[0].dtype)
    if torch.is_autocast_enabled(h.device.type) and dtype != torch.float64:
        return torch.get_autocast_dtype(h.device.type)
    return dtype


def add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b, with acc in a higher precision than a and b if need be."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda and torch.cuda.get_device_capability(acc.device)[0] >= 8:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)  # low-precision GEMM, float32 accumulator
    else:
        acc.add_(a @ b)


def chunk_rows(n_rows: int, vocab: int, bytes_per_logit: int, budget: int) -> int:
    """Rows per chunk: the fewest chunks whose working memory fits the budget, evenly sized."""
    fit = max(1, budget // (vocab * bytes_per_logit))
    return math.ceil(n_rows / math.ceil(n_rows / fit))


@torch.no_grad()
def chain_cross_entropy(
    h: torch.Tensor,
    blocks: list[torch.Tensor],
    targets: torch.Tensor,
    scales: list[int],
    weights: torch.Tensor,
    gradients: bool,
):
    """Summed CE of each scale in `scales` (ascending) over rows h (N, D) -> (len(scales),), at least float32.

    With `gradients`, also the gradients of sum_k weights[k] * CE_k: dh (None unless h requires grad) and
    one per block (None for a block that does not require grad), float32 or float64."""
    dtype = compute_dtype(h, blocks)
    acc = torch.promote_types(dtype, torch.float32)
    starts = [0, *accumulate(b.shape[1] for b in blocks)]
    top = scales[-1]
    with torch.autocast(h.device.type, enabled=False):
        heads = [b.detach().to(dtype) for b in blocks]  # the one cast per call
        sums = torch.zeros(len(scales), dtype=acc, device=h.device)
        dh = torch.empty_like(h) if gradients and h.requires_grad else None
        dheads = [
            torch.zeros(b.shape, dtype=torch.promote_types(b.dtype, torch.float32), device=b.device)
            if gradients and b.requires_grad
            else None
            for b in blocks
        ]
        # What a row holds at once: the logits, one stored gradient per scale below the top, and a cast of one.
        per_logit = len(scales) * acc.itemsize + (dtype.itemsize if dtype != acc else 0)
        head_bytes = blocks[0].shape[0] * starts[-1] * dtype.itemsize
        rows = chunk_rows(len(targets), blocks[0].shape[0], per_logit, max(LOSS_CHUNK_BYTES, head_bytes))
        for r in range(0, len(targets), rows):
            hc, y = h[r : r + rows].detach().to(dtype), targets[r : r + rows, None]
            logits, grads = None, {}
            for k, head in enumerate(heads, start=1):
                block_input = hc[:, starts[k - 1] : starts[k]]
                if logits is None and dtype == acc:
                    logits = block_input @ head.t()
                else:  # low-precision GEMMs sum into float32 logits, never rounded to the GEMMs' dtype
                    if logits is None:
                        logits = torch.zeros(len(y), head.shape[0], dtype=acc, device=h.device)
                    add_matmul(logits, block_input, head.t())
                if k not in scales:
                    continue
                j = scales.index(k)
                row_max = logits.amax(1, keepdim=True)
                target_logit = logits.gather(1, y)
                # softmax's numerator; the top scale's logits are not needed again: it overwrites them
                p = torch.sub(logits, row_max, out=logits if k == top else None).exp_()
                denominator = p.sum(1, keepdim=True)
                sums[j] += (row_max + denominator.log() - target_logit).sum()
                if gradients:
                    w = weights[j].to(acc)
                    p.mul_(w / denominator)
                    p.scatter_add_(1, y, (-w).expand(y.shape))
                    grads[k] = p
            if not gradients:
                continue
            suffix = suffix_cast = None
            for k in range(top, 0, -1):  # D_k = sum of the gradients of the scales k and above
                if k in grads:
                    suffix = grads.pop(k) if suffix is None else suffix.add_(grads.pop(k))
                    suffix_cast = suffix.to(dtype)
                if dh is not None:
                    dh[r : r + rows, starts[k - 1] : starts[k]] = suffix_cast @ heads[k - 1]
                if dheads[k - 1] is not None:
                    add_matmul(dheads[k - 1], suffix_cast.t(), hc[:, starts[k - 1] : starts[k]])
        if dh is not None and h.shape[1] > starts[-1]:
            dh[:, starts[-1] :] = 0  # columns no chain of the head reads
    return sums, dh, dheads


class FusedChainCrossEntropy(torch.autograd.Function):
    """(total, per_scale) of chain_cross_entropy; the gradients are computed in the forward pass."""

    @staticmethod
    def forward(ctx, h, targets, weights, scales, *blocks):
        sums, dh, dheads = chain_cross_entropy(h, list(blocks), targets, list(scales), weights, gradients=True)
        ctx.save_for_backward(dh, *dheads)
        ctx.mark_non_differentiable(sums)
        return (weights.to(sums.dtype) * sums).sum(), sums

    @staticmethod
    def backward(ctx, grad_total, grad_per_scale):
        # In place: these are this call's own buffers, and the head's gradient is as large as the head.
        grads = [g.mul_(grad_total.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return grads[0], None, None, None, *grads[1:]


class MultiScaleLoss(nn.Module):
    """A CoLM whose forward returns the summed next-token CE of every chosen scale and their weighted total.

    This is the module DDP/FSDP wrap: their hooks run on forward(), so the whole loss, LM head
    included, must be inside one forward call.
    """

    def __init__(self, model: nn.Module, scales: list[int]):
        super().__init__()
        self.model = model
        self.scales = sorted(scales)

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor,
        scales: list[int] | None = None,
        weights: torch.Tensor | None = None,
    ) -> ScaleLosses:
        """(B, T) inputs and targets -> the summed CE per scale (divide by B * T for the mean) and
        sum_k weights[k] * CE_k (weights default to 1), whose backward gives the model's gradients."""
        scales = sorted(scales or self.scales)
        top = scales[-1]
        h = self.model.hidden_states(ids, top).flatten(0, 1)
        y = targets.flatten()
        blocks = self.model.head_blocks(top)
        if weights is None:
            weights = torch.ones(len(scales), device=h.device)
        if torch.is_grad_enabled() and (h.requires_grad or any(b.requires_grad for b in blocks)):
            return ScaleLosses(*FusedChainCrossEntropy.apply(h, y, weights, tuple(scales), *blocks))
        sums, _, _ = chain_cross_entropy(h, blocks, y, scales, weights, gradients=False)
        return ScaleLosses((weights.to(sums.dtype) * sums).sum(), sums)
