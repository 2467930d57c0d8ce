"""The kernels under torch.autocast and torch.compile, for every backend (Triton under the interpreter).

Autocast: the chain linear casts as nn.Linear does (operands to the autocast dtype for the GEMMs),
the chain RMSNorm computes as Llama's RMSNorm does (float32 statistics). Compile: a whole model
compiles with fullgraph=True (no graph break) and matches eager, forward and backward. The tests
use the aot_eager backend (dynamo and AOT autograd, which is where custom ops need their fake and
autograd registrations); inductor's C++ code generation would take a minute per test on CPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

from colm_kernels.chain_linear import chain_linear, pytorch, reference  # noqa: E402
from colm_kernels.chain_linear import triton as triton_linear  # noqa: E402
from colm_kernels.chain_rmsnorm import chain_rms_norm  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402
from tests.test_kernels_chain_linear import make_case, reference_fp32  # noqa: E402

# (backend, autocast dtype): the Triton interpreter computes garbage in bfloat16 (triton 3.9), so
# Triton runs under float16 autocast here; the GPU tests (test_kernels_cuda.py) run it in bfloat16.
CASES = [("torch", torch.bfloat16), ("reference", torch.bfloat16), ("torch", torch.float16), ("triton", torch.float16)]
LOW_PRECISION = dict(atol=2e-2, rtol=2e-2)  # a few bf16 roundings (8 bits of mantissa)
EPS = 1e-6


@pytest.mark.parametrize(("backend", "dtype"), CASES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("chains", [([20, 30, 14], [17, 40, 9]), ([24], [16])], ids=["3-odd", "1"])
def test_chain_linear_under_autocast_casts_as_nn_linear(monkeypatch, backend, dtype, chains):
    monkeypatch.setenv("COLM_KERNELS", backend)
    gemm_dtypes = []
    for module in (pytorch, triton_linear):  # record what the GEMMs are handed
        forward = module.forward
        monkeypatch.setattr(
            module,
            "forward",
            lambda x2, ws, forward=forward: gemm_dtypes.append({x2.dtype, *(w.dtype for w in ws)}) or forward(x2, ws),
        )
    x, weights = make_case(*chains, lead=(3, 7))
    dense = reference.dense_chain_weight(weights).detach().requires_grad_()
    x_dense = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = chain_linear(x, weights)
        y_linear = F.linear(x_dense, dense)  # what nn.Linear runs
    assert y.dtype == y_linear.dtype == dtype
    assert all(dtypes == {dtype} for dtypes in gemm_dtypes)
    assert gemm_dtypes or backend == "reference" or len(weights) == 1  # the backend ran
    grad_y = torch.randn_like(y_linear)
    y.backward(grad_y)
    y_linear.backward(grad_y)
    assert x.grad.dtype == x_dense.grad.dtype == torch.float32
    assert all(w.grad.dtype == dense.grad.dtype == torch.float32 for w in weights)
    # Ground truth: the fp32 reference on the operands rounded as autocast rounds them.
    rounded = lambda t: t.detach().to(dtype).float()  # noqa: E731
    expected = reference_fp32(rounded(x), [rounded(w) for w in weights], grad_y.float())
    for got, want in zip([y, x.grad, *(w.grad for w in weights)], expected):
        torch.testing.assert_close(got.float(), want, **LOW_PRECISION)


@pytest.mark.parametrize(
    ("backend", "dtype"), [*CASES, ("triton", torch.float32)], ids=lambda v: str(v).removeprefix("torch.")
)
def test_chain_rms_norm_under_autocast_is_llama_rmsnorm_per_chain(monkeypatch, backend, dtype):
    """Each chain's slice comes out as Llama's RMSNorm of that slice, dtype and values, forward and backward."""
    monkeypatch.setenv("COLM_KERNELS", backend)
    widths = [20, 30, 14]
    x = torch.cat([torch.randn(3, 5, d) * (i + 1) for i, d in enumerate(widths)], dim=-1).to(dtype).requires_grad_()
    norms = []
    for d in widths:
        norms.append(LlamaRMSNorm(d, eps=EPS))
        norms[-1].weight.data = 1 + 0.1 * torch.randn(d)
    x_llama = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # x comes as it is: float32, or dtype after a cast
        y = chain_rms_norm(x, [n.weight for n in norms], EPS)
        expected = torch.cat([n(xi) for n, xi in zip(norms, x_llama.split(widths, dim=-1))], dim=-1)
    assert y.dtype == expected.dtype == torch.float32  # fp32 gains times the normalised input
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else LOW_PRECISION
    torch.testing.assert_close(y, expected, **tolerance)
    grad_y = torch.randn_like(expected)
    got = torch.autograd.grad(y, [x, *(n.weight for n in norms)], grad_y)
    want = torch.autograd.grad(expected, [x_llama, *(n.weight for n in norms)], grad_y)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, **tolerance)


def forward_and_grads(module, *inputs):
    out = module(*inputs)
    grad_out = torch.ones_like(out) / out.numel() ** 0.5
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad] + list(module.parameters())
    return [out, *torch.autograd.grad(out, tensors, grad_out)]


@pytest.mark.parametrize(
    ("backend", "autocast"), [("torch", None), ("torch", torch.bfloat16), ("triton", torch.float16)], ids=str
)
def test_compiled_model_matches_eager_without_graph_breaks(monkeypatch, backend, autocast):
    """A whole (tiny) CoLM compiles as one graph (fullgraph=True) around the custom ops; aot_eager runs
    the traced forward and backward graphs as they are, so compiled and eager give the same numbers."""
    monkeypatch.setenv("COLM_KERNELS", backend)
    model = tiny_model().train()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        eager = forward_and_grads(model, ids)
        torch._dynamo.reset()
        compiled = forward_and_grads(torch.compile(model, fullgraph=True, backend="aot_eager"), ids)
    assert eager[0].dtype == (autocast or torch.float32)
    for c, e in zip(compiled, eager):
        assert c.dtype == e.dtype
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)
