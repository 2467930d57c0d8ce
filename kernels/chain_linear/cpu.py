"""Fast PyTorch chain linear: one GEMM per output chain over its input prefix.

Skipping the zero blocks does (n+1)/(2n) of the dense work. Forward and backward write
straight into preallocated buffers instead of concatenating per-chain results, so the only
extra cost over the ideal is launching n GEMMs instead of one:

    y[:, chain i]      = x[:, :k_i] @ W_i^T
    grad_x[:, :k_i]   += grad_y_i @ W_i          (prefixes overlap, so this accumulates)
    grad_W_i           = grad_y_i^T @ x[:, :k_i]
"""

import torch
import torch.nn.functional as F


def chain_matmuls(x2: torch.Tensor, weights) -> torch.Tensor:
    """(M, >= in_total) -> (M, sum out_i), each chain's GEMM writing its columns of one buffer."""
    y = torch.empty(x2.shape[0], sum(w.shape[0] for w in weights), dtype=x2.dtype, device=x2.device)
    start = 0
    for w in weights:
        torch.mm(x2[:, : w.shape[1]], w.t(), out=y[:, start : start + w.shape[0]])
        start += w.shape[0]
    return y


class ChainLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *weights):
        x2 = x.reshape(-1, x.shape[-1])
        y = chain_matmuls(x2, weights)
        ctx.save_for_backward(x2, *weights)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, *weights = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dys = dy2.split([w.shape[0] for w in weights], dim=1)
        dx = None
        if ctx.needs_input_grad[0]:
            # The last chain reads the longest prefix: it initialises dx, the others add into it.
            dx = torch.zeros_like(x2) if x2.shape[1] > weights[-1].shape[1] else torch.empty_like(x2)
            torch.mm(dys[-1], weights[-1], out=dx[:, : weights[-1].shape[1]])
            for dyi, w in zip(dys[:-1], weights[:-1]):
                dx[:, : w.shape[1]].addmm_(dyi, w)
            dx = dx.view(ctx.x_shape)
        dws = [
            dyi.t() @ x2[:, : w.shape[1]] if needed else None
            for dyi, w, needed in zip(dys, weights, ctx.needs_input_grad[1:])
        ]
        return dx, *dws


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """x: (..., >= in_total) -> (..., sum out_i), weights[i]: (out_i, in_1 + ... + in_i)."""
    if len(weights) == 1:  # a plain linear on a prefix (the Air key/value case)
        return F.linear(x[..., : weights[0].shape[1]], weights[0])
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return ChainLinearFunction.apply(x, *weights)
    # Nothing to differentiate (inference, decoding): the same GEMMs without autograd.Function's
    # per-call bookkeeping, which costs about as much as a decode step's small GEMMs themselves.
    y = chain_matmuls(x.reshape(-1, x.shape[-1]), weights)
    return y.view(*x.shape[:-1], y.shape[-1])
