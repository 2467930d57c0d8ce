"""The chain linear's three passes (forward, grad-input, grad-weight) wired into autograd, twice:

- `ChainLinear`, an autograd.Function, for eager mode: no per-call dispatch cost beyond autograd's;
- torch.library custom ops for torch.compile, which sees each pass as one opaque op whose output
  shape comes from its fake implementation, so a compiled layer has no graph break. A custom op
  costs tens of microseconds per call before any work (its dispatch and schema checks): as much as
  a small layer's GEMMs, which is why eager mode does not use it.

Both run the same backend functions, so their results are bitwise the same. Every path takes the
backend by name ("torch", "masked" or "triton", colm_kernels/_dispatch.py); each backend module
provides `forward`, `grad_input` and `grad_weights` on 2-D tensors of one dtype.
"""

import importlib

import torch

from colm_kernels.chain_linear import flops


def implementation(backend: str):
    # imported lazily: CPU-only machines may lack triton
    return importlib.import_module(f"colm_kernels.chain_linear.{'pytorch' if backend == 'torch' else backend}")


def rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


@torch.library.custom_op("colm::chain_linear", mutates_args=())
def chain_linear(x: torch.Tensor, weights: list[torch.Tensor], backend: str) -> torch.Tensor:
    """x: (..., >= in_total) -> (..., sum out_i), weights[i]: (out_i, in_1 + ... + in_i), all one dtype."""
    y = implementation(backend).forward(rows(x), weights)
    return y.view(*x.shape[:-1], y.shape[-1])


@chain_linear.register_fake
def _(x, weights, backend):
    return x.new_empty(*x.shape[:-1], sum(w.shape[0] for w in weights))


@torch.library.custom_op("colm::chain_linear_grad_input", mutates_args=())
def grad_input(dy: torch.Tensor, weights: list[torch.Tensor], width: int, backend: str) -> torch.Tensor:
    """(..., sum out_i) -> (..., width), the gradient of x of that width."""
    dx = implementation(backend).grad_input(rows(dy), weights, width)
    return dx.view(*dy.shape[:-1], width)


@grad_input.register_fake
def _(dy, weights, width, backend):
    return dy.new_empty(*dy.shape[:-1], width)


@torch.library.custom_op("colm::chain_linear_grad_weights", mutates_args=())
def grad_weights(
    dy: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor], needed: list[bool], backend: str
) -> torch.Tensor:
    """The gradients of the weights in `needed`, flattened one after another (one tensor: outputs may not alias)."""
    return implementation(backend).grad_weights(rows(dy), rows(x), weights, needed)


@grad_weights.register_fake
def _(dy, x, weights, needed, backend):
    return dy.new_empty(sum(w.numel() for w in weights))


def setup_context(ctx, inputs, output):
    x, weights, backend = inputs
    ctx.save_for_backward(x, *weights)
    ctx.backend = backend


def split_weight_gradients(flat: torch.Tensor, weights: list[torch.Tensor], needed: list[bool]) -> list:
    return [
        g.view(w.shape) if need else None
        for g, w, need in zip(flat.split([w.numel() for w in weights]), weights, needed)
    ]


def backward(ctx, dy):
    x, *weights = ctx.saved_tensors
    needs_x, needs_weights, _ = ctx.needs_input_grad
    dx = grad_input(dy, weights, x.shape[-1], ctx.backend) if needs_x else None
    dws = [None] * len(weights)
    if any(needs_weights):
        dws = split_weight_gradients(grad_weights(dy, x, weights, needs_weights, ctx.backend), weights, needs_weights)
    return dx, dws, None


chain_linear.register_autograd(backward, setup_context=setup_context)


class ChainLinear(torch.autograd.Function):
    """The custom ops' passes without their dispatch: what eager mode runs (apply(x, backend, *weights))."""

    @staticmethod
    def forward(ctx, x, backend, *weights):
        ctx.save_for_backward(x, *weights)
        ctx.backend = backend
        y = implementation(backend).forward(rows(x), list(weights))
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x, *weights = ctx.saved_tensors
        needs_x, _, *needs_weights = ctx.needs_input_grad
        passes = implementation(ctx.backend)
        dx = passes.grad_input(rows(dy), weights, x.shape[-1]).view(*dy.shape[:-1], x.shape[-1]) if needs_x else None
        dws = [None] * len(weights)
        if any(needs_weights):
            flat = passes.grad_weights(rows(dy), rows(x), weights, needs_weights)
            dws = split_weight_gradients(flat, weights, needs_weights)
        return dx, None, *dws


flops.register_when_counted()
