"""chain_linear(x, weights): the one entry point; the backend comes from COLM_KERNELS.

weights[i] has shape (out_i, in_1 + ... + in_i). x is (..., width) with width >= in_total;
the result is (..., out_1 + ... + out_n). Backends: colm_kernels/_dispatch.py.
"""

import torch
import torch.nn.functional as F

from colm_kernels._dispatch import choose
from colm_kernels.chain_linear import op, reference


def autocast_operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # What autocast does to nn.Linear's operands: floating tensors other than float64 go to its dtype.
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def chain_linear(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    backend = choose(x)
    if backend == "reference":
        return reference.chain_linear(x, weights)  # plain torch ops: autocast reaches them itself
    # Autocast never reaches a custom op: cast its operands here, as it casts nn.Linear's.
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weights = autocast_operand(x, dtype), [autocast_operand(w, dtype) for w in weights]
    if backend in ("torch", "masked") and len(weights) == 1:  # a plain linear on a prefix (the Air key/value case)
        return F.linear(x[..., : weights[0].shape[1]], weights[0])
    if torch.compiler.is_compiling():
        return op.chain_linear(x, weights, backend)  # one opaque op per pass in the compiled graph
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return op.ChainLinear.apply(x, backend, *weights)
    # Nothing to differentiate (inference, decoding): the same GEMMs without autograd's bookkeeping,
    # which costs about as much as a decode step's small GEMMs themselves.
    y = op.implementation(backend).forward(op.rows(x), weights)
    return y.view(*x.shape[:-1], y.shape[-1])


__all__ = ["chain_linear"]
