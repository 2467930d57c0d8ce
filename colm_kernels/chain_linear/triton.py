"""Triton chain linear: block-sparse GEMMs that only visit the lower-triangular blocks.

As one matrix the chain weight W (sum out_i, in_total) is block lower-triangular. Each of
the three passes (forward, grad-input, grad-weight) is a single launch over all chains:
the chain boundaries travel as small int tensors, and every tile works out which chain its
rows belong to, so tiles need not align with chains (uneven widths, widths that are not
multiples of the tile) and the loops stop at the chain diagonal instead of multiplying zeros.

The per-chain weights are packed into one flat buffer for the kernels (chain i's row block
stored row-major with row stride in_1+...+in_i). Packing copies the parameters once per pass
that reads them (forward, grad-input), O(params), against O(tokens * params) for the GEMMs;
the weight gradient comes back in the same layout and is split into views without another copy.

The three passes take 2-D tensors; kernels/chain_linear/op.py wires them into autograd. On CPU
tensors they run under TRITON_INTERPRET=1 (the tests), with COLM_KERNELS=triton.
"""

import functools
from itertools import accumulate

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32


@triton.jit
def _chain_index(idx, bounds_ptr, NUM_CHAINS: tl.constexpr):
    """Chain that owns position idx (scalar or block), given bounds[0]=0 <= ... <= bounds[n].

    Counting inner boundaries <= idx also skips chains of width zero."""
    chain = idx * 0  # rather than tl.zeros_like: the same for scalars and blocks
    for i in tl.static_range(1, NUM_CHAINS):
        chain += (idx >= tl.load(bounds_ptr + i)).to(idx.dtype)
    return chain


@triton.jit
def _row_layout(rn, out_bounds, in_bounds, w_offsets, NUM_CHAINS: tl.constexpr):
    """For output rows rn: how many input features each reads, and where its weights start."""
    chain = _chain_index(rn, out_bounds, NUM_CHAINS)
    k_row = tl.load(in_bounds + chain + 1)
    w_row = tl.load(w_offsets + chain) + (rn - tl.load(out_bounds + chain)).to(tl.int64) * k_row
    return k_row, w_row


@triton.jit
def _forward_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    out_bounds,
    in_bounds,
    w_offsets,
    M,
    N,
    stride_xm,
    stride_ym,
    NUM_CHAINS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # y[m, n] = sum_{k < k_row(n)} x[m, k] * W[n, k]
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_row, w_row = _row_layout(rn, out_bounds, in_bounds, w_offsets, NUM_CHAINS)
    # The latest chain in the tile reads the longest prefix; everything right of it is zero.
    k_end = tl.max(tl.where(rn < N, k_row, 0))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :],
            mask=(rm[:, None] < M) & (rk[None, :] < k_end),
            other=0.0,
        )
        b = tl.load(
            w_ptr + w_row[None, :] + rk[:, None],
            mask=(rn[None, :] < N) & (rk[:, None] < k_row[None, :]),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(
        y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


@triton.jit
def _grad_input_kernel(
    dy_ptr,
    w_ptr,
    dx_ptr,
    out_bounds,
    in_bounds,
    w_offsets,
    M,
    N,
    K,
    stride_dym,
    stride_dxm,
    NUM_CHAINS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # dx[m, k] = sum_{n : k < k_row(n)} dy[m, n] * W[n, k]
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = tl.program_id(1) * BLOCK_K
    rk = k0 + tl.arange(0, BLOCK_K)
    # Output chains before the one owning input column k0 never read this tile: start below them.
    n_start = tl.load(out_bounds + _chain_index(k0, in_bounds, NUM_CHAINS))
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
    for n0 in range(n_start, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        k_row, w_row = _row_layout(rn, out_bounds, in_bounds, w_offsets, NUM_CHAINS)
        a = tl.load(
            dy_ptr + rm[:, None].to(tl.int64) * stride_dym + rn[None, :],
            mask=(rm[:, None] < M) & (rn[None, :] < N),
            other=0.0,
        )
        b = tl.load(
            w_ptr + w_row[:, None] + rk[None, :],
            mask=(rn[:, None] < N) & (rk[None, :] < k_row[:, None]),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(
        dx_ptr + rm[:, None].to(tl.int64) * stride_dxm + rk[None, :],
        acc.to(dx_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rk[None, :] < K),
    )


@triton.jit
def _grad_weight_kernel(
    dy_ptr,
    x_ptr,
    dw_ptr,
    out_bounds,
    in_bounds,
    w_offsets,
    M,
    N,
    stride_dym,
    stride_xm,
    NUM_CHAINS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # dW[n, k] = sum_m dy[m, n] * x[m, k], only for k < k_row(n)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    k_row, w_row = _row_layout(rn, out_bounds, in_bounds, w_offsets, NUM_CHAINS)
    k_end = tl.max(tl.where(rn < N, k_row, 0))
    if k0 >= k_end:
        return  # tile above the chain diagonal: no weights live here
    rk = k0 + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC_DTYPE)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        a = tl.load(
            dy_ptr + rm[None, :].to(tl.int64) * stride_dym + rn[:, None],
            mask=(rm[None, :] < M) & (rn[:, None] < N),
            other=0.0,
        )
        b = tl.load(
            x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :],
            mask=(rm[:, None] < M) & (rk[None, :] < k_end),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(
        dw_ptr + w_row[:, None] + rk[None, :],
        acc.to(dw_ptr.dtype.element_ty),
        mask=(rn[:, None] < N) & (rk[None, :] < k_row[:, None]),
    )


@functools.lru_cache(maxsize=256)
def _layout(shapes: tuple[torch.Size, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Chain boundaries as int tensors: output rows, input prefixes, flat weight offsets.

    Cached per shape and device: building them is a host-to-device copy that synchronises the stream."""
    out_bounds = [0, *accumulate(s[0] for s in shapes)]
    in_bounds = [0, *(s[1] for s in shapes)]
    w_offsets = [0, *accumulate(s.numel() for s in shapes)][:-1]
    return tuple(torch.tensor(v, dtype=torch.int64, device=device) for v in (out_bounds, in_bounds, w_offsets))


def _meta(num_chains: int, dtype: torch.dtype) -> dict:
    # Accumulate in fp32 (fp64 for fp64 inputs, which gradcheck uses).
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return dict(NUM_CHAINS=num_chains, ACC_DTYPE=acc, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)


def _operands(weights: list[torch.Tensor], dtype: torch.dtype):
    """The packed weights (tl.dot wants both operands in one dtype) and the boundary tables."""
    w_flat = torch.cat([w.reshape(-1) for w in weights]).to(dtype)
    return w_flat, _layout(tuple(w.shape for w in weights), w_flat.device)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def forward(x2: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """(M, >= in_total) -> (M, sum out_i)."""
    # The kernels trust these shapes for their pointer arithmetic.
    prefixes = [w.shape[1] for w in weights]
    if prefixes != sorted(prefixes) or x2.shape[-1] < prefixes[-1] or any(w.dim() != 2 for w in weights):
        raise ValueError(
            f"chain weights must be 2-D with non-decreasing input prefixes no wider than x; "
            f"got {[tuple(w.shape) for w in weights]} for x of width {x2.shape[-1]}"
        )
    x2 = _row_major(x2)
    w_flat, layout = _operands(weights, x2.dtype)
    M, n_total = x2.shape[0], sum(w.shape[0] for w in weights)
    y = torch.empty(M, n_total, device=x2.device, dtype=x2.dtype)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(n_total, BLOCK_N))
    _forward_kernel[grid](
        x2, w_flat, y, *layout, M, n_total, x2.stride(0), y.stride(0), **_meta(len(weights), x2.dtype)
    )
    return y


def grad_input(dy2: torch.Tensor, weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """(M, sum out_i) -> (M, width); x may be wider than the chains read: those columns get zero gradient."""
    dy2 = _row_major(dy2)
    w_flat, layout = _operands(weights, dy2.dtype)
    (M, n_total), k_total = dy2.shape, weights[-1].shape[1]
    dx = (torch.zeros if width > k_total else torch.empty)(M, width, device=dy2.device, dtype=dy2.dtype)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(k_total, BLOCK_K))
    _grad_input_kernel[grid](
        dy2, w_flat, dx, *layout, M, n_total, k_total, dy2.stride(0), dx.stride(0), **_meta(len(weights), dy2.dtype)
    )
    return dx


def grad_weights(dy2: torch.Tensor, x2: torch.Tensor, weights: list[torch.Tensor], needed: list[bool]) -> torch.Tensor:
    """Every chain's weight gradient in one launch, flattened one after another (`needed` is not used:
    skipping a frozen chain's tiles would not save a launch)."""
    dy2, x2 = _row_major(dy2), _row_major(x2)
    layout = _layout(tuple(w.shape for w in weights), dy2.device)
    (M, n_total), k_total = dy2.shape, weights[-1].shape[1]
    dw = torch.empty(sum(w.numel() for w in weights), device=dy2.device, dtype=dy2.dtype)
    grid = (triton.cdiv(n_total, BLOCK_N), triton.cdiv(k_total, BLOCK_K))
    _grad_weight_kernel[grid](
        dy2, x2, dw, *layout, M, n_total, dy2.stride(0), x2.stride(0), **_meta(len(weights), dy2.dtype)
    )
    return dw
