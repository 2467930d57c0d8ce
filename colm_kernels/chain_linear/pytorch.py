"""Chain linear in plain PyTorch: one GEMM per output chain over its input prefix, on any device.

Skipping the zero blocks does (n+1)/(2n) of the dense work. The three passes write straight
into preallocated buffers instead of concatenating per-chain results, so the only extra cost
over the ideal is launching 3n GEMMs instead of 3 (on CUDA: cuBLAS per chain):

    y[:, chain i]      = x[:, :k_i] @ W_i^T
    grad_x[:, :k_i]   += grad_y_i @ W_i          (prefixes overlap, so this accumulates)
    grad_W_i           = grad_y_i^T @ x[:, :k_i]

All three take 2-D tensors of one dtype; kernels/chain_linear/op.py wires them into autograd.
"""

import torch


def forward(x2: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """(M, >= in_total) -> (M, sum out_i), each chain's GEMM writing its columns of one buffer."""
    y = torch.empty(x2.shape[0], sum(w.shape[0] for w in weights), dtype=x2.dtype, device=x2.device)
    start = 0
    for w in weights:
        torch.mm(x2[:, : w.shape[1]], w.t(), out=y[:, start : start + w.shape[0]])
        start += w.shape[0]
    return y


def grad_input(dy2: torch.Tensor, weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """(M, sum out_i) -> (M, width): columns past the chains' inputs get zero gradient."""
    dys = dy2.split([w.shape[0] for w in weights], dim=1)
    # The last chain reads the longest prefix: it initialises dx, the others add into it.
    dx = (torch.zeros if width > weights[-1].shape[1] else torch.empty)(
        dy2.shape[0], width, dtype=dy2.dtype, device=dy2.device
    )
    torch.mm(dys[-1], weights[-1], out=dx[:, : weights[-1].shape[1]])
    for dyi, w in zip(dys[:-1], weights[:-1]):
        # addmm with out= rather than addmm_: torch's FLOP counter counts the one, not the other
        torch.addmm(dx[:, : w.shape[1]], dyi, w, out=dx[:, : w.shape[1]])
    return dx


def grad_weights(dy2: torch.Tensor, x2: torch.Tensor, weights: list[torch.Tensor], needed: list[bool]) -> torch.Tensor:
    """The weight gradients of the chains in `needed`, flattened one after another (the others' slots unset)."""
    dw = torch.empty(sum(w.numel() for w in weights), dtype=dy2.dtype, device=dy2.device)
    dys = dy2.split([w.shape[0] for w in weights], dim=1)
    offset = 0
    for dyi, w, need in zip(dys, weights, needed):
        if need:
            torch.mm(dyi.t(), x2[:, : w.shape[1]], out=dw[offset : offset + w.numel()].view(w.shape))
        offset += w.numel()
    return dw
