"""chain_linear(x, weights): the one entry point; picks the implementation by device.

weights[i] has shape (out_i, in_1 + ... + in_i). x is (..., width) with width >= in_total;
the result is (..., out_1 + ... + out_n).
"""

import os

import torch

from kernels.chain_linear import cpu, reference


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    if os.environ.get("COLM_KERNELS") == "reference":
        return reference.chain_linear(x, weights)
    return cpu.chain_linear(x, weights)


__all__ = ["chain_linear"]
