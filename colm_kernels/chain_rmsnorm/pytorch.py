"""Per-chain RMSNorm in plain PyTorch ops, on any device: one pass when every chain has the same
width (the common case), viewing the hidden state as (..., chains, width) and normalising the last dim.

Autograd differentiates it and torch.compile traces it as it is; the statistics are float32
whatever autocast is on, as in Llama's RMSNorm."""

import torch

from colm_kernels.chain_rmsnorm import reference


def chain_rms_norm(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> torch.Tensor:
    width = weights[0].shape[0]
    if any(w.shape[0] != width for w in weights):
        return reference.chain_rms_norm(x, weights, eps)
    compute = torch.promote_types(x.dtype, torch.float32)
    xs = x[..., : len(weights) * width].to(compute).unflatten(-1, (len(weights), width))
    xs = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
    return (torch.stack(list(weights)) * xs.to(x.dtype)).flatten(-2)
