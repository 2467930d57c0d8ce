"""chain_rms_norm(x, weights, eps): the one entry point; the backend comes from COLM_KERNELS.

Backends: kernels/_dispatch.py. Only the Triton one is a custom op (with its own backward):
the others are plain torch ops, which autograd, autocast and torch.compile handle themselves."""

import torch

from colm_kernels._dispatch import choose
from colm_kernels.chain_rmsnorm import pytorch, reference


def chain_rms_norm(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> torch.Tensor:
    backend = choose(x)
    if backend == "triton":
        from colm_kernels.chain_rmsnorm import triton  # imported lazily: CPU-only machines may lack triton

        return triton.chain_rms_norm(x, weights, eps)
    return (reference if backend == "reference" else pytorch).chain_rms_norm(x, weights, eps)


__all__ = ["chain_rms_norm"]
