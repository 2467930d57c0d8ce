"""Per-chain RMSNorm: statistics over each chain's own slice, so no chain sees a later one.

Computed in fp32 (fp64 stays fp64) and cast back, as Llama's RMSNorm does.
"""

import torch


def chain_rms_norm(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> torch.Tensor:
    """x: (..., d_1 + ... + d_k), weights[i]: (d_i,) -> same shape as x."""
    compute, out, start = torch.promote_types(x.dtype, torch.float32), [], 0
    for w in weights:
        xi = x[..., start : start + w.shape[0]].to(compute)
        xi = xi * torch.rsqrt(xi.pow(2).mean(-1, keepdim=True) + eps)
        out.append(w * xi.to(x.dtype))
        start += w.shape[0]
    return torch.cat(out, dim=-1)
