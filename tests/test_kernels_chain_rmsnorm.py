"""Per-chain RMSNorm kernels against the reference.

The Triton path runs on CPU under the Triton interpreter; TRITON_INTERPRET must be set
before triton decorates the kernels, hence first thing in this module.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from colm_kernels.chain_rmsnorm import chain_rms_norm, pytorch, reference  # noqa: E402
from colm_kernels.chain_rmsnorm import triton as triton_impl  # noqa: E402
from tests.conftest import select_kernels  # noqa: E402

EPS = 1e-6
# 1-4 chains; widths that are not powers of two leave masked lanes in the Triton block.
WIDTHS = {"1": [48], "2-equal": [32, 32], "3-odd": [20, 30, 14], "4-uneven": [33, 7, 50, 38]}
# Ground truth is the fp32 reference on the same values; fp16 rounds outputs and grads.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2)}


def make_case(widths, lead=(3, 5), extra=0, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Chains at different scales: a norm that mixed chains would give visibly wrong statistics.
    x = torch.cat([torch.randn(*lead, d, generator=gen) * (i + 1) for i, d in enumerate(widths)], dim=-1)
    x = torch.cat([x, torch.randn(*lead, extra, generator=gen)], dim=-1)
    weights = [1 + 0.1 * torch.randn(d, generator=gen) for d in widths]
    return x.to(dtype).requires_grad_(), [w.to(dtype).requires_grad_() for w in weights]


def forward_and_grads(fn, x, weights, grad_y):
    y = fn(x, weights, EPS)
    return [y, *torch.autograd.grad(y, [x, *weights], grad_y)]


def reference_fp32(x, weights, grad_y):
    up = lambda t: t.detach().float().requires_grad_()  # noqa: E731
    return forward_and_grads(reference.chain_rms_norm, up(x), [up(w) for w in weights], grad_y.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("widths", WIDTHS.values(), ids=WIDTHS.keys())
def test_triton_matches_reference(widths, dtype):
    x, weights = make_case(widths, dtype=dtype)
    grad_y = torch.randn(*x.shape[:-1], sum(widths)).to(dtype)
    got = forward_and_grads(triton_impl.chain_rms_norm, x, weights, grad_y)
    for g, e in zip(got, reference_fp32(x, weights, grad_y)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), e, **TOLERANCE[dtype])


def test_triton_several_rows_per_program(monkeypatch):
    """Long inputs give each program a run of rows and a partial dw; the partials must add up."""
    monkeypatch.setattr(triton_impl, "MAX_PROGRAMS_PER_CHAIN", 4)
    x, weights = make_case(WIDTHS["3-odd"], lead=(3, 6))  # 18 rows: runs of 5 and a short last one
    grad_y = torch.randn(*x.shape[:-1], x.shape[-1])
    got = forward_and_grads(triton_impl.chain_rms_norm, x, weights, grad_y)
    for g, e in zip(got, reference_fp32(x, weights, grad_y)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("widths", WIDTHS.values(), ids=WIDTHS.keys())
def test_torch_matches_reference(widths):
    x, weights = make_case(widths, lead=(2, 3, 4))
    grad_y = torch.randn(*x.shape[:-1], sum(widths))
    got = forward_and_grads(pytorch.chain_rms_norm, x, weights, grad_y)
    for g, e in zip(got, reference_fp32(x, weights, grad_y)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "impl",
    [triton_impl.chain_rms_norm, pytorch.chain_rms_norm, reference.chain_rms_norm],
    ids=["triton", "torch", "reference"],
)
def test_chains_are_independent(impl):
    """Changing chain 3 (or columns past the chains) must not move chains 1-2, forward or backward."""
    widths = [16, 16, 16]
    x, weights = make_case(widths, lead=(4,), extra=5)
    y = impl(x, weights, EPS)
    with torch.no_grad():
        x2 = x.clone()
        x2[:, 32:] = torch.randn_like(x2[:, 32:]) * 10
    y2 = impl(x2, weights, EPS)
    assert y.shape == (4, 48)
    assert torch.equal(y[:, :32], y2[:, :32]) and not torch.allclose(y[:, 32:], y2[:, 32:])
    (grad_x,) = torch.autograd.grad(y[:, :32].sum(), x)
    assert (grad_x[:, 32:] == 0).all() and (grad_x[:, :32] != 0).any()


@pytest.mark.parametrize("impl", [triton_impl.chain_rms_norm, pytorch.chain_rms_norm], ids=["triton", "torch"])
def test_gradcheck_fp64(impl):
    x, weights = make_case([3, 5], lead=(2, 2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, *w: impl(x, list(w), EPS), (x, *weights))


def fail(*args):
    raise AssertionError("wrong implementation dispatched")


def test_dispatch(monkeypatch):
    """COLM_KERNELS picks the backend (default: torch, on CPU and CUDA alike)."""
    x, weights = make_case([8, 8])
    expected = reference.chain_rms_norm(x, weights, EPS)
    modules = {"torch": pytorch, "triton": triton_impl, "reference": reference}
    for chosen in ["torch", "triton", "reference", None]:
        select_kernels(monkeypatch, chosen)
        for name, module in modules.items():
            if name != (chosen or "torch"):
                monkeypatch.setattr(module, "chain_rms_norm", fail)
        torch.testing.assert_close(chain_rms_norm(x, weights, EPS), expected, atol=1e-5, rtol=1e-5)


def test_boundary_table_is_built_once_per_shape():
    x, weights = make_case([8, 8])
    triton_impl._bounds.cache_clear()
    for _ in range(2):
        triton_impl.chain_rms_norm(x, weights, EPS).sum().backward()
    info = triton_impl._bounds.cache_info()
    assert (info.misses, info.currsize) == (1, 1) and info.hits == 3, info
