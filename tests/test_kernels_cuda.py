"""The kernels on a CUDA device against the float32 reference: GPU-only tests (marker `gpu`).

Where there is no CUDA device, conftest.py deselects them (pytest's summary counts them): the
CPU suite covers the same code paths with the Triton kernels under the interpreter, and these
tests add what only a GPU can show - the compiled Triton kernels, cuBLAS, CUDA autocast, and
inductor's CUDA code around the custom ops. Each check runs in a fresh process without
TRITON_INTERPRET (the kernel test modules set it for this one, and triton reads it at import).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

# Largest error relative to the largest reference value, against the fp32 reference: measured on an
# H100 at most 2.4e-6 (fp32), 6.4e-4 (fp16), 5.1e-3 (bf16) for the Triton kernels (docs/kernels.md).
MAX_ERROR = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
CHAINS = [
    ([512], [384]),
    ([256, 256], [256, 256]),
    ([200, 300, 140], [170, 400, 90]),
    ([330, 70, 500, 380], [100, 250, 30, 700]),
]


def chain_case(ins, outs, dtype, rows=1000):
    gen = torch.Generator().manual_seed(0)
    prefixes = torch.tensor(ins).cumsum(0).tolist()
    weights = [torch.randn(o, k, generator=gen) / k**0.5 for o, k in zip(outs, prefixes)]
    x = torch.randn(rows, prefixes[-1], generator=gen)
    return [t.to("cuda", dtype).requires_grad_() for t in [x, *weights]]


def forward_and_grads(fn, tensors, grad_y):
    y = fn(*tensors)
    return [y, *torch.autograd.grad(y, tensors, grad_y)]


def fp32(tensors):
    return [t.detach().float().requires_grad_() for t in tensors]


def assert_matches(got, expected, dtype, result_dtype=None):
    for g, e in zip(got, expected):
        assert g.dtype == (result_dtype or dtype), (g.dtype, dtype)
        error = ((g.float() - e).abs().max() / e.abs().max()).item()
        assert error <= MAX_ERROR[dtype], (error, dtype)


def check_chain_linear(backend: str, dtype: str) -> None:
    from colm_kernels.chain_linear import op, reference

    dtype = getattr(torch, dtype)
    for ins, outs in CHAINS:
        x, *weights = chain_case(ins, outs, dtype)
        grad_y = torch.randn(x.shape[0], sum(outs), device="cuda")
        expected = forward_and_grads(lambda x, *w: reference.chain_linear(x, list(w)), fp32([x, *weights]), grad_y)
        for path in (
            lambda x, *w: op.chain_linear(x, list(w), backend),
            lambda x, *w: op.ChainLinear.apply(x, backend, *w),
        ):
            assert_matches(forward_and_grads(path, [x, *weights], grad_y.to(dtype)), expected, dtype)


def check_fused_loss(dtype: str) -> None:
    """The fused multi-scale loss on CUDA against every scale's materialised float32 logits: float32 exactly
    (to rounding), bf16 autocast (the float32-accumulating GEMMs) within bf16's error, head gradients float32."""
    from colm_core.losses import FusedChainCrossEntropy

    gen = torch.Generator().manual_seed(0)
    tokens, vocab, widths = 300, 1000, [64, 32, 96]
    h = torch.randn(tokens, sum(widths), generator=gen).cuda().requires_grad_()
    blocks = [(torch.randn(vocab, d, generator=gen) * 0.05).cuda().requires_grad_() for d in widths]
    y = torch.randint(0, vocab, (tokens,), generator=gen).cuda()
    weights = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    starts = [0, 64, 96, 192]
    direct = sum(
        w * F.cross_entropy(h[:, : starts[k]] @ torch.cat(blocks[:k], 1).t(), y, reduction="sum")
        for w, k in zip(weights, (1, 2, 3))
    )
    expected = [direct, *torch.autograd.grad(direct, [h, *blocks])]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        total, _ = FusedChainCrossEntropy.apply(h, y, weights, (1, 2, 3), *blocks)
    got = [total, *torch.autograd.grad(total, [h, *blocks])]
    assert_matches(got, [e.detach().float() for e in expected], getattr(torch, dtype), result_dtype=torch.float32)


def check_chain_rms_norm(backend: str, dtype: str) -> None:
    from colm_kernels.chain_rmsnorm import pytorch, reference, triton

    dtype = getattr(torch, dtype)
    impl = {"torch": pytorch, "triton": triton}[backend].chain_rms_norm
    for widths, _ in CHAINS:
        x, *_ = chain_case(widths, widths, dtype)
        weights = [(1 + 0.1 * torch.randn(d, device="cuda")).to(dtype).requires_grad_() for d in widths]
        grad_y = torch.randn_like(x, dtype=torch.float32)
        got = forward_and_grads(lambda x, *w: impl(x, list(w), 1e-6), [x, *weights], grad_y.to(dtype))
        expected = forward_and_grads(
            lambda x, *w: reference.chain_rms_norm(x, list(w), 1e-6), fp32([x, *weights]), grad_y
        )
        assert_matches(got, expected, dtype)


def check_autocast(backend: str) -> None:
    """Under CUDA autocast (bf16) the chain linear hands its GEMMs bf16 operands and returns what
    nn.Linear returns; the gradients come back float32, as the parameters are."""
    os.environ["COLM_KERNELS"] = backend
    from colm_kernels.chain_linear import chain_linear, reference

    x, *weights = chain_case([200, 300, 140], [170, 400, 90], torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = chain_linear(x, weights)
        y_linear = F.linear(x, reference.dense_chain_weight(weights))
    assert y.dtype == y_linear.dtype == torch.bfloat16
    grad_y = torch.randn_like(y)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = forward_and_grads(lambda x, *w: chain_linear(x, list(w)), [x, *weights], grad_y)
    rounded = [t.detach().bfloat16().float().requires_grad_() for t in [x, *weights]]
    expected = forward_and_grads(lambda x, *w: reference.chain_linear(x, list(w)), rounded, grad_y.float())
    assert_matches(got[:1], expected[:1], torch.bfloat16)
    assert_matches(got[1:], expected[1:], torch.bfloat16, result_dtype=torch.float32)


def check_compile(backend: str) -> None:
    """A small CoLM compiled by inductor (no graph break) under bf16 autocast matches eager."""
    os.environ["COLM_KERNELS"] = backend
    from colm_core.config import ColmConfig
    from colm_core.model import CoLM

    cfg = ColmConfig(
        vocab_size=512,
        n_layers=2,
        head_dim=32,
        heads=[4, 4, 4],
        kv_heads=[2, 2, 2],
        ffn=[256, 256, 256],
        max_seq_len=128,
    ).validate()
    model = CoLM(cfg).init_weights(std=0.02).cuda().train()
    ids = torch.randint(0, cfg.vocab_size, (2, 128), device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for m in (model, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        results.append([loss, *torch.autograd.grad(loss, list(model.parameters()))])
    assert_matches(results[1], [r.float() for r in results[0]], torch.bfloat16, result_dtype=torch.float32)


CHECKS = [
    *[("check_chain_linear", b, d) for b in ("torch", "masked", "triton") for d in ("float32", "float16", "bfloat16")],
    *[("check_fused_loss", d) for d in ("float32", "bfloat16")],
    *[("check_chain_rms_norm", b, d) for b in ("torch", "triton") for d in ("float32", "float16", "bfloat16")],
    *[("check_autocast", b) for b in ("torch", "triton")],
    *[("check_compile", b) for b in ("torch", "triton")],
]


@pytest.mark.gpu
@pytest.mark.parametrize("check", CHECKS, ids="-".join)
def test_on_cuda(check):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "COLM_KERNELS")}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__, *check], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
