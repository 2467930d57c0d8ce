"""The chain invariants of the model itself (docs/spec.md sections 1-4)."""

import pytest
import torch

from colm_core.model import CoLM, chain_of, kv_heads_read
from colm_core.verify import activations
from tests.conftest import tiny_config, tiny_model

CONFIGS = {
    "colm": {},
    "air": dict(kv_share=True, heads=[2, 4, 2], kv_heads=[2, 0, 0]),
    "tied": dict(tie_embeddings=True),
}


def first_chains_model(model: CoLM, k: int) -> CoLM:
    """A k-chain model built from the first k chains' tensors only (no surgery code involved)."""
    c = model.config
    small = CoLM(c.replace(heads=c.heads[:k], kv_heads=c.kv_heads[:k], ffn=c.ffn[:k]))
    state = {name: t for name, t in model.state_dict().items() if chain_of(name) <= k}
    small.load_state_dict(state, strict=True)
    return small.eval()


@pytest.mark.parametrize("variant", CONFIGS)
@pytest.mark.parametrize("changed_chain", [2, 3])
def test_changing_a_chain_leaves_earlier_chains_bitwise_unchanged(variant, changed_chain):
    model = tiny_model(**CONFIGS[variant])
    ids = torch.randint(0, 97, (2, 11))
    acts, _ = activations(model, ids)
    logits = [model(ids, chains=k) for k in range(1, changed_chain)]
    width = model.config.hidden_size(changed_chain - 1)

    with torch.no_grad():
        touched = 0
        for name, p in model.named_parameters():
            if chain_of(name) == changed_chain:
                p.add_(torch.randn_like(p))
                touched += 1
    assert touched > 0
    acts2, logits_full2 = activations(model, ids)
    for a, b in zip(acts, acts2):
        assert torch.equal(a[..., :width], b[..., :width])
        assert not torch.equal(a, b)  # the changed chain really changed something
    for k in range(1, changed_chain):
        assert torch.equal(logits[k - 1], model(ids, chains=k))


@pytest.mark.parametrize("variant", CONFIGS)
def test_submodel_equals_model_built_from_first_chains(variant):
    model = tiny_model(**CONFIGS[variant])
    ids = torch.randint(0, 97, (3, 9))
    for k in range(1, model.config.n_chains + 1):
        assert torch.equal(model(ids, chains=k), first_chains_model(model, k)(ids))


def test_chain_prefix_of_full_activations_is_the_submodel():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 7))
    full = model.hidden_states(ids)
    for k in (1, 2):
        assert torch.equal(full[..., : model.config.hidden_size(k)], model.hidden_states(ids, chains=k))


def test_submodel_cost_falls_with_chains():
    """Fewer chains means fewer multiply-adds: count them with torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = CoLM(tiny_config(heads=[4] * 4, kv_heads=[2] * 4, ffn=[64] * 4, vocab_size=64)).init_weights()
    ids = torch.randint(0, 64, (1, 32))
    flops = []
    for k in (1, 4):
        with FlopCounterMode(display=False) as counter:
            model(ids, chains=k)
        flops.append(counter.get_total_flops())
    assert flops[1] > 4 * flops[0]


def test_air_every_query_head_reads_chain1_keys_values():
    cfg = tiny_config(kv_share=True, heads=[4, 2, 6], kv_heads=[2, 0, 0])
    assert kv_heads_read(cfg) == [0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1]
    model = tiny_model(kv_share=True, heads=[4, 2, 6], kv_heads=[2, 0, 0])
    names = [n for n, _ in model.named_parameters() if ".attn.k." in n or ".attn.v." in n]
    assert names and all(chain_of(n) == 1 for n in names)
    # Perturbing chain 1's values changes every chain's attention output.
    ids = torch.randint(0, 97, (1, 6))
    outs = {}
    hook = model.layers[0].attn.register_forward_hook(lambda m, i, o: outs.setdefault("y", o))
    model(ids)
    before = outs.pop("y")
    with torch.no_grad():
        model.layers[0].attn.v.weights[0].add_(1.0)
    model(ids)
    after = outs.pop("y")
    hook.remove()
    start = 0
    for w in model.config.chain_widths:
        assert not torch.equal(before[..., start : start + w], after[..., start : start + w])
        start += w


def test_chains_out_of_range_is_a_clear_error():
    from colm_core.errors import ColmError

    model = tiny_model()
    with pytest.raises(ColmError, match="outside 1..3"):
        model(torch.zeros(1, 2, dtype=torch.long), chains=4)
    with pytest.raises(ColmError, match="outside 1..3"):
        model(torch.zeros(1, 2, dtype=torch.long), chains=0)


def test_input_longer_than_the_context_is_a_clear_error():
    from colm_core.errors import ColmError

    model = tiny_model()  # max_seq_len 64
    assert model(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 97)
    with pytest.raises(ColmError, match="65 tokens is longer than the model's context \\(max_seq_len 64\\)"):
        model(torch.zeros(1, 65, dtype=torch.long))
