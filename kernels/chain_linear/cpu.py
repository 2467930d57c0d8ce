"""Fast PyTorch chain linear: one matmul per output chain over its input prefix.

Skipping the zero blocks does (n+1)/(2n) of the dense work; autograd differentiates the
per-chain matmuls directly, so backward skips them too.
"""

import torch
import torch.nn.functional as F


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    if len(weights) == 1:
        return F.linear(x[..., : weights[0].shape[1]], weights[0])
    return torch.cat([F.linear(x[..., : w.shape[1]], w) for w in weights], dim=-1)
