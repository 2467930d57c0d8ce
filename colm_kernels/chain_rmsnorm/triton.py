"""Triton per-chain RMSNorm: one program per (row block, chain), statistics over that chain only.

Matches the reference's numerics: fp32 statistics (fp64 for fp64 inputs), the normalised value cast back to the
input dtype before the gain multiplies it (as Llama's RMSNorm does).

Backward, with x_hat = x * rstd and g = dy * w (per chain of width d):
    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat
Each program sums dw over its own rows into one partial row; the partials are summed on
the host (Liger-Kernel does the same), which avoids atomics and keeps dw deterministic.

Forward and backward are torch.library custom ops (one opaque op each under torch.compile,
shapes from their fake implementations). On CPU tensors they run under TRITON_INTERPRET=1 (the
tests), with COLM_KERNELS=triton.
"""

import functools
from itertools import accumulate

import torch
import triton
import triton.language as tl

MAX_PROGRAMS_PER_CHAIN = 1024


@triton.jit
def _chain_slice(bounds_ptr, BLOCK: tl.constexpr):
    chain = tl.program_id(1)
    start = tl.load(bounds_ptr + chain)
    width = tl.load(bounds_ptr + chain + 1) - start
    cols = tl.arange(0, BLOCK)
    return chain, start + cols, cols < width, width


@triton.jit
def _forward_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    rstd_ptr,
    bounds_ptr,
    M,
    stride_xm,
    stride_ym,
    eps,
    NUM_CHAINS: tl.constexpr,
    COMPUTE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chain, cols, mask, width = _chain_slice(bounds_ptr, BLOCK)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    for row in range(tl.program_id(0) * ROWS, tl.minimum(tl.program_id(0) * ROWS + ROWS, M)):
        x = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0)
        xf = x.to(COMPUTE)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf) / width + eps)
        y = w * (xf * rstd).to(x.dtype)
        tl.store(y_ptr + row * stride_ym + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row * NUM_CHAINS + chain, rstd)


@triton.jit
def _backward_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    rstd_ptr,
    dx_ptr,
    dw_partial_ptr,
    bounds_ptr,
    M,
    stride_dym,
    stride_xm,
    stride_dxm,
    stride_dwm,
    NUM_CHAINS: tl.constexpr,
    COMPUTE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chain, cols, mask, width = _chain_slice(bounds_ptr, BLOCK)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(COMPUTE)
    dw = tl.zeros((BLOCK,), dtype=COMPUTE)
    for row in range(tl.program_id(0) * ROWS, tl.minimum(tl.program_id(0) * ROWS + ROWS, M)):
        x = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + row * stride_dym + cols, mask=mask, other=0.0).to(COMPUTE)
        rstd = tl.load(rstd_ptr + row * NUM_CHAINS + chain)
        x_hat = x.to(COMPUTE) * rstd
        g = dy * w
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat) / width))
        tl.store(dx_ptr + row * stride_dxm + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        # the gain saw x_hat rounded to the input dtype
        dw += dy * x_hat.to(x.dtype).to(COMPUTE)
    tl.store(dw_partial_ptr + tl.program_id(0) * stride_dwm + cols, dw, mask=mask)


def _launch(M: int, widths: list[int], dtype: torch.dtype):
    """Rows per program, grid, and the constexprs shared by both kernels."""
    rows = triton.cdiv(M, min(M, MAX_PROGRAMS_PER_CHAIN)) if M else 1
    meta = dict(
        NUM_CHAINS=len(widths),
        COMPUTE=tl.float64 if dtype == torch.float64 else tl.float32,
        ROWS=rows,
        BLOCK=triton.next_power_of_2(max(widths)),
    )
    return (triton.cdiv(M, rows), len(widths)), meta


@functools.lru_cache(maxsize=256)
def _bounds(widths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Chain boundaries, cached per widths and device: building them is a host-to-device copy
    that synchronises the stream."""
    return torch.tensor([0, *accumulate(widths)], device=device)


def _output_dtypes(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.dtype, torch.dtype]:
    """(y, rstd): y as the reference's gain * normalised x promotes, the statistics fp32 (fp64 stays fp64)."""
    return torch.promote_types(x.dtype, weights[0].dtype), torch.promote_types(x.dtype, torch.float32)


@torch.library.custom_op("colm::chain_rms_norm", mutates_args=())
def chain_rms_norm_op(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (..., >= d_1 + ... + d_k) -> y (..., d_1 + ... + d_k) and the per-row, per-chain rstd (M, k)."""
    widths = [w.shape[0] for w in weights]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w_flat = torch.cat(weights)
    M = x2.shape[0]
    y_dtype, compute = _output_dtypes(x, weights)
    y = torch.empty(M, sum(widths), device=x.device, dtype=y_dtype)
    rstd = torch.empty(M, len(widths), device=x.device, dtype=compute)
    grid, meta = _launch(M, widths, compute)
    bounds = _bounds(tuple(widths), x.device)
    _forward_kernel[grid](x2, w_flat, y, rstd, bounds, M, x2.stride(0), y.stride(0), eps, **meta)
    return y.view(*x.shape[:-1], y.shape[-1]), rstd


@chain_rms_norm_op.register_fake
def _(x, weights, eps):
    y_dtype, compute = _output_dtypes(x, weights)
    rows = x.numel() // x.shape[-1]
    return x.new_empty(*x.shape[:-1], sum(w.shape[0] for w in weights), dtype=y_dtype), x.new_empty(
        rows, len(weights), dtype=compute
    )


@torch.library.custom_op("colm::chain_rms_norm_backward", mutates_args=())
def chain_rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor], rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of x (its shape) and of the gains (flattened one after another)."""
    widths = [w.shape[0] for w in weights]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, width = x2.shape
    dy2 = dy.reshape(M, -1)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    grid, meta = _launch(M, widths, rstd.dtype)
    # x may be wider than the chains read; the unread columns get zero gradient.
    dx = (torch.zeros if width > dy2.shape[1] else torch.empty)(M, width, device=x.device, dtype=x.dtype)
    dw_partial = torch.zeros(grid[0], dy2.shape[1], device=x.device, dtype=rstd.dtype)
    _backward_kernel[grid](
        dy2,
        x2,
        torch.cat(weights),
        rstd,
        dx,
        dw_partial,
        _bounds(tuple(widths), x.device),
        M,
        dy2.stride(0),
        x2.stride(0),
        dx.stride(0),
        dw_partial.stride(0),
        **meta,
    )
    return dx.view(x.shape), dw_partial.sum(0).to(weights[0].dtype)


@chain_rms_norm_backward.register_fake
def _(dy, x, weights, rstd):
    return torch.empty_like(x), x.new_empty(sum(w.shape[0] for w in weights), dtype=weights[0].dtype)


def _setup_context(ctx, inputs, output):
    x, weights, eps = inputs
    ctx.save_for_backward(x, output[1], *weights)


def _backward(ctx, dy, _drstd):
    x, rstd, *weights = ctx.saved_tensors
    dx, dw = chain_rms_norm_backward(dy, x, weights, rstd)
    return dx, list(dw.split([w.shape[0] for w in weights])), None


chain_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def chain_rms_norm(x: torch.Tensor, weights: list[torch.Tensor], eps: float) -> torch.Tensor:
    """x: (..., >= d_1 + ... + d_k), weights[i]: (d_i,) -> (..., d_1 + ... + d_k)."""
    if x.shape[-1] < sum(w.shape[0] for w in weights):  # the kernels would read past each row
        raise ValueError(f"x of width {x.shape[-1]} is narrower than the chains {[w.shape[0] for w in weights]}")
    return chain_rms_norm_op(x, weights, eps)[0]
