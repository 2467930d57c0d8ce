"""The fused multi-scale loss against the direct cross-entropy of each k-chain sub-model's full logits."""

import pytest
import torch
import torch.nn.functional as F

from colm_core import losses
from colm_core.losses import MultiScaleLoss
from tests.conftest import tiny_model


def direct(model, x, y, scales, weights):
    """sum_k w_k CE_k from each sub-model's whole logits tensor, differentiated by autograd."""
    per_scale = torch.stack(
        [F.cross_entropy(model(x, chains=k).flatten(0, 1), y.flatten(), reduction="sum") for k in scales]
    )
    return (weights * per_scale).sum(), per_scale


def gradients(model, total, grad=1.0):
    model.zero_grad(set_to_none=True)
    (total * grad).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float32, dict(rtol=1e-4, atol=1e-5)), (torch.float64, dict(rtol=1e-10, atol=1e-12))]
)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(
    "scales, weights", [([3], [1.0]), ([1, 2, 3], [1.0, 1.0, 1.0]), ([1, 3], [0.5, 2.0]), ([2, 3], [0.0, 1.5])]
)
@pytest.mark.parametrize("rows_per_chunk", [None, 7])  # one chunk (what fits); chunks of 7 rows, the last of 4
def test_fused_loss_and_every_gradient_are_the_direct_ones(
    monkeypatch, dtype, tol, tied, scales, weights, rows_per_chunk
):
    if rows_per_chunk:
        monkeypatch.setattr(losses, "chunk_rows", lambda *args: rows_per_chunk)
    model = tiny_model(seed=5, tie_embeddings=tied).to(dtype).train()
    x, y = torch.randint(0, 97, (2, 3, 13), generator=torch.Generator().manual_seed(1))  # 39 rows: odd
    w = torch.tensor(weights, dtype=dtype)
    ref_total, ref_per_scale = direct(model, x, y, scales, w)
    ref = gradients(model, ref_total, 0.37)
    out = MultiScaleLoss(model, scales)(x, y, weights=w)
    got = gradients(model, out.total, 0.37)  # an incoming gradient other than 1 (the 1 / tokens of training)
    torch.testing.assert_close(out.total, ref_total.detach(), **tol)
    torch.testing.assert_close(out.per_scale, ref_per_scale.detach(), **tol)
    assert out.per_scale.dtype == dtype and not out.per_scale.requires_grad
    for name, g in got.items():
        torch.testing.assert_close(g, ref[name], **tol, msg=lambda m: f"{name}: {m}")


def test_frozen_chains_and_head_get_no_gradient_and_the_rest_the_direct_one(monkeypatch):
    monkeypatch.setattr(losses, "chunk_rows", lambda *args: 10)
    model = tiny_model(seed=6).train()
    frozen = {"embed.0", "lm_head.0", "lm_head.2", "norm.gains.0"}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen and not name.startswith("layers.0."))
    x, y = torch.randint(0, 97, (2, 2, 17), generator=torch.Generator().manual_seed(2))
    w = torch.tensor([1.0, 0.25, 3.0])
    ref = gradients(model, direct(model, x, y, [1, 2, 3], w)[0])
    got = gradients(model, MultiScaleLoss(model, [1, 2, 3])(x, y, weights=w).total)
    for name, g in got.items():
        if ref[name] is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert got["lm_head.0"] is None and got["lm_head.1"] is not None


def test_per_scale_losses_carry_no_gradient_to_misuse():
    """Only the weighted total's gradient is computed (in the forward pass): differentiating the per-scale
    values some other way must fail loudly, not give the gradient of another weighting."""
    model = tiny_model(seed=7).train()
    x, y = torch.randint(0, 97, (2, 1, 9))
    with pytest.raises(RuntimeError, match="does not require grad"):
        MultiScaleLoss(model, [1, 2])(x, y).per_scale.sum().backward()


def test_without_gradients_the_loss_is_the_same_and_no_gradient_is_built():
    model = tiny_model(seed=8)
    x, y = torch.randint(0, 97, (2, 2, 11))
    with torch.enable_grad():
        trained = MultiScaleLoss(model, [1, 3])(x, y)
    with torch.no_grad():
        evaluated = MultiScaleLoss(model, [1, 3])(x, y)
        ref = direct(model, x, y, [1, 3], torch.ones(2))[1]
    assert torch.equal(evaluated.per_scale, trained.per_scale.detach())
    torch.testing.assert_close(evaluated.per_scale, ref, rtol=1e-6, atol=1e-5)
    assert evaluated.total.grad_fn is None


def test_under_autocast_the_head_is_cast_once_and_its_gradient_is_float32(monkeypatch):
    monkeypatch.setattr(losses, "chunk_rows", lambda *args: 6)  # several chunks
    model = tiny_model(seed=9).train()
    x, y = torch.randint(0, 97, (2, 2, 16))
    exact_total, _ = direct(model, x, y, [1, 2, 3], torch.ones(3))
    exact = gradients(model, exact_total)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_total, _ = direct(model, x, y, [1, 2, 3], torch.ones(3))
    autocast = gradients(model, autocast_total)
    casts = []
    real_to = torch.Tensor.to

    def counting_to(t, *args, **kwargs):
        if t.dim() == 2 and t.shape[0] == 97 and torch.bfloat16 in args:  # a head block (V = 97 rows)
            casts.append(t.shape)
        return real_to(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = MultiScaleLoss(model, [1, 2, 3])(x, y)
    monkeypatch.undo()
    got = gradients(model, out.total)
    assert len(casts) == 3  # one per head block, not one per chunk
    torch.testing.assert_close(out.total, exact_total.detach(), rtol=1e-2, atol=0.0)
    for block in ("lm_head.0", "lm_head.1", "lm_head.2"):
        # bf16 GEMMs either way (and a bf16 body): as close to float32's gradient as autocast's direct loss
        assert got[block].dtype == torch.float32
        error = lambda g: (g - exact[block]).abs().max().item()  # noqa: E731
        assert error(got[block]) <= 1.5 * error(autocast[block])


@pytest.mark.parametrize("rows, fit, chunks", [(39, 39, 1), (39, 16, 3), (4096, 1000, 5), (5, 1, 5)])
def test_chunks_are_the_fewest_that_fit_and_evenly_sized(rows, fit, chunks):
    size = losses.chunk_rows(rows, 100, 4, fit * 100 * 4)
    assert size <= fit and -(-rows // size) == chunks
    assert rows - size * (chunks - 1) > size - chunks  # the last chunk is not much smaller than the others


def test_compiled_loss_is_bitwise_the_eager_one():
    """`colm train --compile` compiles MultiScaleLoss: the fused loss traces whole (fullgraph), gradients included."""
    model = tiny_model(seed=10).train()
    x, y = torch.randint(0, 97, (2, 2, 20), generator=torch.Generator().manual_seed(3))
    w = torch.tensor([0.5, 1.0, 2.0])
    loss = MultiScaleLoss(model, [1, 2, 3])
    eager = loss(x, y, weights=w)
    expected = gradients(model, eager.total, 0.3)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, y, weights=w)
    got = gradients(model, compiled.total, 0.3)
    assert torch.equal(compiled.total, eager.total) and torch.equal(compiled.per_scale, eager.per_scale)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
