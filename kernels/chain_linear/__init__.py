"""chain_linear(x, weights): the one entry point; picks the implementation by device.

weights[i] has shape (out_i, in_1 + ... + in_i). x is (..., width) with width >= in_total;
the result is (..., out_1 + ... + out_n). Dispatch rules: kernels/_dispatch.py.
"""

import torch

from kernels._dispatch import choose
from kernels.chain_linear import cpu, reference


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    impl = choose(x)
    if impl == "triton":
        from kernels.chain_linear import triton  # imported lazily: CPU-only machines may lack triton

        return triton.chain_linear(x, weights)
    return (reference if impl == "reference" else cpu).chain_linear(x, weights)


__all__ = ["chain_linear"]
