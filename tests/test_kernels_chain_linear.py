"""Chain linear kernels against the reference (a dense matmul with a block lower-triangular weight).

The Triton path runs on CPU under the Triton interpreter; TRITON_INTERPRET must be set
before triton decorates the kernels, hence first thing in this module.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from colm_kernels.chain_linear import chain_linear, masked, op, pytorch, reference  # noqa: E402
from colm_kernels.chain_linear import triton as triton_impl  # noqa: E402
from tests.conftest import select_kernels  # noqa: E402

# (input chain widths, output chain widths): 1-4 chains, equal and unequal, and widths that
# are not multiples of the Triton tiles, so tiles straddle chain boundaries.
# Default lead dims give 111 rows: more than one BLOCK_M tile.
CHAINS = {
    "1": ([48], [40]),
    "2-equal": ([32, 32], [32, 32]),
    "3-odd": ([20, 30, 14], [17, 40, 9]),
    "4-uneven": ([33, 7, 50, 38], [10, 25, 3, 70]),
}
# Ground truth is the fp32 reference on the same values; fp16 inputs round the output.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def make_case(ins, outs, lead=(3, 37), extra=0, dtype=torch.float32, seed=0):
    """Weights (out_i, in_1+..+in_i) and an input of width in_total + extra."""
    gen = torch.Generator().manual_seed(seed)
    prefixes = np.cumsum(ins).tolist()
    weights = [torch.randn(o, k, generator=gen) / k**0.5 for o, k in zip(outs, prefixes)]
    x = torch.randn(*lead, prefixes[-1] + extra, generator=gen)
    return x.to(dtype).requires_grad_(), [w.to(dtype).requires_grad_() for w in weights]


def backend(name):
    """The custom op with one backend, whatever COLM_KERNELS says."""
    return lambda x, weights: op.chain_linear(x, weights, name)


def eager(name):
    """The autograd.Function (eager mode's path) with one backend."""
    return lambda x, weights: op.ChainLinear.apply(x, name, *weights)


IMPLS = {
    "triton": backend("triton"),
    "torch": backend("torch"),
    "masked": backend("masked"),
    "torch-eager": eager("torch"),
    "masked-eager": eager("masked"),
}


def forward_and_grads(fn, x, weights, grad_y):
    y = fn(x, weights)
    return [y, *torch.autograd.grad(y, [x, *weights], grad_y)]


def reference_fp32(x, weights, grad_y):
    up = lambda t: t.detach().float().requires_grad_()  # noqa: E731
    return forward_and_grads(reference.chain_linear, up(x), [up(w) for w in weights], grad_y.float())


def test_interpreter_gives_known_answers():
    """Sentinel: triton < 3.2 with numpy >= 2 makes the interpreter return wrong numbers
    silently. Check the versions, then run a tiny kernel whose answer torch knows."""
    triton_version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    numpy_major = int(np.__version__.split(".")[0])
    assert not (triton_version < (3, 2) and numpy_major >= 2), (
        f"triton {triton.__version__} with numpy {np.__version__}: the Triton interpreter "
        "is wrong under numpy 2; install triton>=3.2 or numpy<2"
    )

    @triton.jit
    def known_answer(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
        rows = tl.arange(0, BLOCK)
        idx = rows[:, None] * BLOCK + rows[None, :]
        mask = (rows[:, None] < n) & (rows[None, :] < n)
        a = tl.load(a_ptr + idx, mask=mask, other=0.0)
        b = tl.load(b_ptr + idx, mask=mask, other=0.0)
        shift = ((rows * 3 + 7) % 5).to(tl.float32)  # integer arithmetic mixed with Python ints
        out = tl.dot(a, b, input_precision="ieee") + tl.sum(a, axis=1)[:, None] * shift[None, :]
        tl.store(out_ptr + idx, out, mask=mask)

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    out = torch.full((16, 16), float("nan"))
    known_answer[(1,)](a, b, out, 13, BLOCK=16)
    n = 13
    expected = a[:n, :n] @ b[:n, :n] + a[:n, :n].sum(1, keepdim=True) * ((torch.arange(n) * 3 + 7) % 5).float()
    torch.testing.assert_close(out[:n, :n], expected, atol=1e-5, rtol=1e-5)
    assert out[n:].isnan().all() and out[:, n:].isnan().all(), "masked store wrote outside the mask"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("chains", CHAINS.values(), ids=CHAINS.keys())
def test_triton_matches_reference(chains, dtype):
    x, weights = make_case(*chains, dtype=dtype)
    grad_y = torch.randn(*x.shape[:-1], sum(chains[1])).to(dtype)
    got = forward_and_grads(backend("triton"), x, weights, grad_y)
    for g, e in zip(got, reference_fp32(x, weights, grad_y)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), e, **TOLERANCE[dtype])


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("chains", [([24], [16]), ([20, 30, 14], [17, 40, 9])], ids=["air", "3-odd"])
def test_reads_only_the_prefix(impl, chains):
    """x wider than the chains read (the Air case: one weight on x[..., :d_1]): the extra
    columns must not leak into the output and get zero gradient."""
    x, weights = make_case(*chains, lead=(7,), extra=9)
    with torch.no_grad():
        poisoned = x.clone()
        poisoned[..., -9:] = float("nan")
    poisoned.requires_grad_()
    grad_y = torch.randn(7, sum(chains[1]))
    got = forward_and_grads(impl, poisoned, weights, grad_y)
    expected = reference_fp32(x, weights, grad_y)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert (got[1][..., -9:] == 0).all()


@pytest.mark.parametrize("name", ["torch", "masked"])
@pytest.mark.parametrize("chains", CHAINS.values(), ids=CHAINS.keys())
def test_torch_and_masked_match_reference(chains, name):
    x, weights = make_case(*chains, lead=(3, 4, 2))
    grad_y = torch.randn(*x.shape[:-1], sum(chains[1]))
    got = forward_and_grads(eager(name), x, weights, grad_y)
    for g, e in zip(got, reference_fp32(x, weights, grad_y)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_frozen_chain_gets_no_gradient(impl):
    """Chain tuning freezes earlier chains: their weights get no gradient, the rest still do."""
    x, weights = make_case([8, 8], [8, 8])
    weights[0].requires_grad_(False)
    impl(x, weights).sum().backward()
    assert weights[0].grad is None
    assert weights[1].grad is not None and x.grad is not None


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_gradcheck_fp64(impl):
    # The interpreter runs tl.dot in fp64 too, so the Triton path is gradchecked as well.
    x, weights = make_case([3, 2, 4], [2, 3, 1], lead=(2, 2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, *w: impl(x, list(w)), (x, *weights))


@pytest.mark.parametrize("name", ["torch", "masked", "triton"])
@pytest.mark.parametrize("chains", [CHAINS["1"], CHAINS["4-uneven"]], ids=["1", "4-uneven"])
def test_eager_function_and_custom_op_give_bitwise_the_same(chains, name):
    """Eager mode's autograd.Function and torch.compile's custom ops run the same passes."""
    x, weights = make_case(*chains, lead=(2, 9))
    weights[0].requires_grad_(len(weights) == 1)  # a frozen chain too, where there are several
    grad_y = torch.randn(*x.shape[:-1], sum(chains[1]))
    inputs = [x, *(w for w in weights if w.requires_grad)]

    def run(impl):
        y = impl(x, weights)
        return [y, *torch.autograd.grad(y, inputs, grad_y)]

    for got, expected in zip(run(eager(name)), run(backend(name))):
        assert torch.equal(got, expected)


def fail(*args):
    raise AssertionError("wrong implementation dispatched")


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_dispatch(monkeypatch, grad):
    """COLM_KERNELS picks the backend (default: torch, on CPU and CUDA alike), with and without autograd;
    eager mode never goes through the custom op (torch.compile's path)."""
    x, weights = make_case([8, 8], [8, 8])
    expected = reference.chain_linear(x, weights)
    calls = {"torch": pytorch, "masked": masked, "triton": triton_impl}
    monkeypatch.setattr(op, "chain_linear", fail)
    for chosen in ["torch", "masked", "triton", "reference", None]:
        select_kernels(monkeypatch, chosen)
        for name, module in calls.items():
            if name != (chosen or "torch"):
                monkeypatch.setattr(module, "forward", fail)
        if chosen != "reference":
            monkeypatch.setattr(reference, "chain_linear", fail)
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(chain_linear(x, weights), expected, atol=1e-5, rtol=1e-5)


def test_bad_backend_setting_names_the_choices(monkeypatch):
    x, weights = make_case([8, 8], [8, 8])
    monkeypatch.setenv("COLM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="torch, masked, triton, reference"):
        chain_linear(x, weights)
    monkeypatch.setenv("COLM_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")  # the kernels stay interpreted: triton read it at import
    with pytest.raises(ValueError, match="CUDA only"):
        chain_linear(x, weights)


def test_boundary_tables_are_built_once_per_shape():
    """Building a table is a host-to-device copy that synchronises the stream: the second call of the
    same shapes must reuse the first call's tables."""
    x, weights = make_case([8, 8], [8, 8])
    triton_impl._layout.cache_clear()
    for _ in range(2):
        backend("triton")(x, weights).sum().backward()
    info = triton_impl._layout.cache_info()
    assert (info.misses, info.currsize) == (1, 1) and info.hits >= 3, info


def test_triton_rejects_shapes_its_pointer_arithmetic_cannot_trust():
    x, weights = make_case([8, 8], [8, 8])
    with pytest.raises(ValueError):
        backend("triton")(x[..., :12], weights)  # x narrower than the last prefix
    with pytest.raises(ValueError):
        backend("triton")(x, weights[::-1])  # prefixes must not shrink


def test_flop_counter_counts_the_lower_triangular_blocks():
    """torch's FLOP counter counts 2 x rows x (the blocks' multiply-adds) per pass: the per-chain GEMMs in eager
    mode, the custom ops' registered formulas under torch.compile."""
    from torch.utils.flop_counter import FlopCounterMode

    x, weights = make_case([8, 4, 4], [4, 8, 4], lead=(5,))
    weights[0].requires_grad_(False)  # no grad-weight pass for a frozen chain
    with FlopCounterMode(display=False) as counter:
        chain_linear(x, weights).sum().backward()
    macs = 4 * 8 + 8 * 12 + 4 * 16
    assert counter.get_total_flops() == 2 * 5 * (macs + macs + (macs - 4 * 8))
