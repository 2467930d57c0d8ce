"""Chain linear as three dense GEMMs on one packed block lower-triangular weight, on any device.

The chain weights are copied into one (sum out_i, in_total) matrix with zeros above the chain
diagonal (under autocast the copy is the cast, so packing costs no extra pass over the weights),
and every pass is one dense GEMM, zero blocks included:

    y      = x[:, :in_total] @ W^T
    grad_x = grad_y @ W                       (the zero blocks add nothing)
    grad_W = grad_y^T @ x[:, :in_total]       (dense; only the lower blocks are kept)

That is the full dense work, 2n/(n+1) times the block-sparse one, in 3 GEMMs instead of 3n: on
CUDA, cuBLAS's dense speed, the floor any block-sparse formulation must beat. The forward and the
grad-input pass each pack the weights (O(params), against O(tokens x params) for the GEMMs).

All three take 2-D tensors of one dtype; kernels/chain_linear/op.py wires them into autograd.
"""

import torch


def packed(weights: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The chain weights as one block lower-triangular matrix: chain i's rows, its prefix columns filled."""
    w = weights[0].new_zeros(sum(w.shape[0] for w in weights), weights[-1].shape[1], dtype=dtype)
    start = 0
    for block in weights:
        w[start : start + block.shape[0], : block.shape[1]].copy_(block)
        start += block.shape[0]
    return w


def forward(x2: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """(M, >= in_total) -> (M, sum out_i)."""
    return x2[:, : weights[-1].shape[1]] @ packed(weights, x2.dtype).t()


def grad_input(dy2: torch.Tensor, weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """(M, sum out_i) -> (M, width): columns past the chains' inputs get zero gradient."""
    k_total = weights[-1].shape[1]
    if width == k_total:
        return dy2 @ packed(weights, dy2.dtype)
    dx = torch.zeros(dy2.shape[0], width, dtype=dy2.dtype, device=dy2.device)
    torch.mm(dy2, packed(weights, dy2.dtype), out=dx[:, :k_total])
    return dx


def grad_weights(dy2: torch.Tensor, x2: torch.Tensor, weights: list[torch.Tensor], needed: list[bool]) -> torch.Tensor:
    """The weight gradients of the chains in `needed`, flattened one after another (the others' slots unset)."""
    dense = dy2.t() @ x2[:, : weights[-1].shape[1]]
    dw = torch.empty(sum(w.numel() for w in weights), dtype=dy2.dtype, device=dy2.device)
    offset = row = 0
    for w, need in zip(weights, needed):
        if need:
            dw[offset : offset + w.numel()].view(w.shape).copy_(dense[row : row + w.shape[0], : w.shape[1]])
        offset += w.numel()
        row += w.shape[0]
    return dw
