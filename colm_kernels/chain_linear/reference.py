"""The chain linear as docs/spec.md defines it: a dense matmul with a block lower-triangular weight.

weights[i] has shape (out_i, in_1 + ... + in_i): output chain i reads input chains 1..i.
"""

import torch
import torch.nn.functional as F


def dense_chain_weight(weights: list[torch.Tensor]) -> torch.Tensor:
    """Assemble the per-chain row blocks into one (sum out_i, in_total) matrix, zeros above the diagonal."""
    in_total = weights[-1].shape[1]
    rows = [F.pad(w, (0, in_total - w.shape[1])) for w in weights]
    return torch.cat(rows, dim=0)


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """x: (..., >= in_total) -> (..., sum out_i). Only the first in_total features of x are read."""
    in_total = weights[-1].shape[1]
    return F.linear(x[..., :in_total], dense_chain_weight(weights))
