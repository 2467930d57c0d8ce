"""chain_rms_norm(x, weights, eps): the one entry point; picks the implementation by device.

Dispatch rules: kernels/_dispatch.py."""

import torch

from kernels._dispatch import choose
from kernels.chain_rmsnorm import cpu, reference


def chain_rms_norm(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> torch.Tensor:
    impl = choose(x)
    if impl == "triton":
        from kernels.chain_rmsnorm import triton  # imported lazily: CPU-only machines may lack triton

        return triton.chain_rms_norm(x, weights, eps)
    return (reference if impl == "reference" else cpu).chain_rms_norm(x, weights, eps)


__all__ = ["chain_rms_norm"]
