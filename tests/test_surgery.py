"""colm expand / slice: exact by construction, checked on real checkpoints and through the CLI."""

import json

import pytest
import torch

from colm_core import surgery
from colm_core.checkpoint import load, open_checkpoint, save
from colm_core.errors import ColmError, ColmRuntimeError
from colm_core.model import chain_of
from colm_core.verify import activations
from tests.conftest import assert_one_line_error, colm_in_process, tiny_model
from tests.test_model import first_chains_model

VARIANTS = {
    "colm": {},
    "air": dict(kv_share=True, heads=[2, 4, 2], kv_heads=[2, 0, 0]),
    "tied": dict(tie_embeddings=True),
}


def saved(tmp_path, name="m", **overrides):
    path = tmp_path / name
    save(tiny_model(**overrides), path)
    return path


def probe(vocab=97):
    return torch.randint(0, vocab, (2, 13))


def assert_same_checkpoint(a, b):
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    assert ca.config == cb.config and ca.dtype == cb.dtype
    ta, tb = dict(ca.tensors()), dict(cb.tensors())
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("variant", VARIANTS)
def test_expand_keeps_every_logit_and_old_chain_activation_exactly(tmp_path, variant):
    src = saved(tmp_path, **VARIANTS[variant])
    heads = 4 if variant == "air" else 2
    surgery.expand(src, tmp_path / "e", add_chains=2, heads=heads, ffn=12, verify=False)
    old, new = load(src), load(tmp_path / "e")
    assert new.config.n_chains == 5 and new.config.heads[3:] == [heads, heads] and new.config.ffn[3:] == [12, 12]
    ids = probe()
    old_acts, old_logits = activations(old, ids)
    new_acts, new_logits = activations(new, ids)
    width = old.config.hidden_size()
    assert torch.equal(new_logits, old_logits)
    assert torch.equal(new(ids, chains=3), old_logits)
    for a, b in zip(old_acts, new_acts):
        assert torch.equal(b[..., :width], a)
        assert b[..., width:].abs().sum() > 0  # the new chains do compute something
    # every tensor the input had is carried over untouched
    new_state = new.state_dict()
    assert all(torch.equal(t, new_state[k]) for k, t in old.state_dict().items())


def test_expand_new_blocks_zero_head_ones_norms_seeded_random(tmp_path):
    src = saved(tmp_path)
    surgery.expand(src, tmp_path / "a", add_chains=1, init_std=0.05, seed=1, verify=False)
    surgery.expand(src, tmp_path / "b", add_chains=1, init_std=0.05, seed=1, verify=False)
    surgery.expand(src, tmp_path / "c", add_chains=1, init_std=0.05, seed=2, verify=False)
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")
    a, c = dict(open_checkpoint(tmp_path / "a").tensors()), dict(open_checkpoint(tmp_path / "c").tensors())
    new = [k for k in a if chain_of(k) == 4]
    assert torch.count_nonzero(a["lm_head.3"]) == 0
    assert all(torch.equal(a[k], torch.ones_like(a[k])) for k in new if "norm" in k)
    q = a["layers.0.attn.q.weights.3"]
    assert q.shape == (16, 64) and abs(q.std().item() - 0.05) < 0.01
    assert a["layers.0.ffn.down.weights.3"].std().item() < 0.03  # residual projections are scaled down
    assert not torch.equal(a["layers.0.attn.q.weights.3"], c["layers.0.attn.q.weights.3"])


def test_expand_tied_embeddings_keeps_new_embedding_zero(tmp_path):
    surgery.expand(saved(tmp_path, tie_embeddings=True), tmp_path / "e", add_chains=1, verify=False)
    assert torch.count_nonzero(dict(open_checkpoint(tmp_path / "e").tensors())["embed.3"]) == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_slice_of_expand_is_bitwise_the_input(tmp_path, variant):
    src = saved(tmp_path, **VARIANTS[variant])
    surgery.expand(src, tmp_path / "e", add_chains=2, verify=False)
    surgery.slice_(tmp_path / "e", tmp_path / "s", chains=3, verify=False)
    assert_same_checkpoint(src, tmp_path / "s")
    assert (src / "model.safetensors").read_bytes() == (tmp_path / "s" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("variant", VARIANTS)
def test_slice_computes_exactly_the_submodel(tmp_path, variant):
    src = saved(tmp_path, **VARIANTS[variant])
    model, ids = load(src), probe()
    for k in (1, 2, 3):
        surgery.slice_(src, tmp_path / f"s{k}", chains=k, verify=False)
        sliced = load(tmp_path / f"s{k}")
        assert sliced.config.n_chains == k
        assert torch.equal(sliced(ids), model(ids, chains=k))
        assert torch.equal(sliced(ids), first_chains_model(model, k)(ids))


def test_air_expansion_of_a_one_chain_model_shares_chain_one_kv(tmp_path):
    src = saved(tmp_path, heads=[4], kv_heads=[2], ffn=[24])
    surgery.expand(src, tmp_path / "e", add_chains=2, air=True, verify=False)
    cfg = open_checkpoint(tmp_path / "e").config
    assert cfg.kv_share and cfg.kv_heads == [2, 0, 0]
    assert not any(k.startswith("layers.0.attn.k.weights.1") for k in open_checkpoint(tmp_path / "e").weight_map)
    ids = probe()
    assert torch.equal(load(tmp_path / "e")(ids), load(src)(ids))


def test_failed_verification_leaves_no_output(tmp_path, monkeypatch):
    src = saved(tmp_path)
    real = surgery.new_block

    def nonzero_head(name, *args):
        block = real(name, *args)
        return block + 1e-3 if name.startswith("lm_head.") else block

    monkeypatch.setattr(surgery, "new_block", nonzero_head)
    with pytest.raises(ColmRuntimeError, match="verification failed"):
        surgery.expand(src, tmp_path / "e", add_chains=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_verification_reports_exact_match(tmp_path):
    src = saved(tmp_path)
    report = surgery.expand(src, tmp_path / "e", add_chains=1)
    assert report["exact"] and report["max_abs_diff"] == 0.0
    report = surgery.slice_(tmp_path / "e", tmp_path / "s", chains=2)
    assert report["exact"] and report["max_abs_diff"] == 0.0


def test_sizes_that_break_gqa_or_air_rules_are_refused():
    cfg = tiny_model().config
    with pytest.raises(ColmError, match="multiple of its KV heads"):
        surgery.expand_config(cfg, 1, heads=3, kv_heads=2)
    air = tiny_model(**VARIANTS["air"]).config
    with pytest.raises(ColmError, match="multiple of chain 1's 2 shared KV heads"):
        surgery.expand_config(air, 1, heads=3)
    with pytest.raises(ColmError, match="omit --kv-heads"):
        surgery.expand_config(air, 1, kv_heads=1)
    with pytest.raises(ColmError, match="only a 1-chain model can become CoLM-Air"):
        surgery.expand_config(cfg, 1, air=True)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_pipeline_records_provenance(tmp_path):
    init = colm_in_process(
        "init", "-o", tmp_path / "m", "--heads", "2,2", "--layers", "1", "--head-dim", "8", "--ffn", "16", check=True
    )
    expand = colm_in_process(
        "expand",
        "--add-chains",
        "2",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--seed",
        "7",
        input=init.stdout,
        cwd=tmp_path,
        check=True,
    )
    out = expand.stdout.strip()
    assert out == str(tmp_path / "m-expand") and "max abs logit difference 0" in " ".join(expand.stderr.split())
    sliced = colm_in_process("slice", "--chains", "2", input=expand.stdout, check=True)
    assert_same_checkpoint(tmp_path / "m", sliced.stdout.strip())
    history = json.loads((tmp_path / "m-expand-slice2" / "colm_history.json").read_text())
    assert [h["command"] for h in history] == ["init", "expand", "slice"]
    assert history[1]["args"]["add_chains"] == 2 and history[1]["args"]["seed"] == 7
    assert history[2]["args"] == {"chains": 2} and history[2]["inputs"][0]["path"] == out
    card = (tmp_path / "m-expand-slice2" / "README.md").read_text()
    assert "`colm expand` add_chains=2, heads=4, kv_heads=2" in card and "`colm slice` chains=2" in card


def test_cli_slice_to_all_chains_is_a_plain_copy(tmp_path):
    src = saved(tmp_path)
    proc = colm_in_process("slice", src, "--chains", "3", "-o", tmp_path / "s", check=True)
    assert "plain copy" in proc.stderr
    assert_same_checkpoint(src, tmp_path / "s")


def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path):
    src = saved(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert_one_line_error(
        colm_in_process("slice", tmp_path / "junk", "--chains", "1", "-o", out), 2, "not a colm checkpoint"
    )
    assert_one_line_error(colm_in_process("slice", src, "--chains", "0", "-o", out), 2, "--chains 0: must be >= 1")
    assert_one_line_error(
        colm_in_process("expand", src, "--add-chains", "0", "-o", out), 2, "--add-chains 0: must be >= 1"
    )
    assert_one_line_error(
        colm_in_process("expand", src, "--heads", "3", "--kv-heads", "2", "-o", out), 2, "multiple of its KV heads"
    )
    assert_one_line_error(colm_in_process("expand", src, "-o", src / "inner"), 2, "inside the input")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in src.iterdir()) == [
        "README.md",
        "colm_history.json",
        "config.json",
        "digests.json",
        "model.safetensors",
    ]


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    src = saved(tmp_path)
    with pytest.raises(ColmError, match="^chains 4 is outside 1..3"):
        surgery.slice_(src, tmp_path / "out", chains=4)
    with pytest.raises(ColmError, match="^init_std must be positive"):
        surgery.expand(src, tmp_path / "out", add_chains=1, init_std=0.0)
    with pytest.raises(ColmError, match="inside the input"):
        surgery.slice_(src, src, chains=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_expand_is_exact_over_many_batches(tmp_path):
    """Regression: SiLU's vectorised kernel rounds by tensor size, so one call over all chains changed
    chain 1's last bits in about a third of the batches; the model now applies it per chain."""
    src = saved(tmp_path, heads=[4], kv_heads=[2], ffn=[24])
    surgery.expand(src, tmp_path / "e", add_chains=2, verify=False)
    old, new = load(src), load(tmp_path / "e")
    with torch.no_grad():
        for _ in range(20):
            ids = probe()
            assert torch.equal(new.hidden_states(ids)[..., :32], old.hidden_states(ids))
            assert torch.equal(new(ids), old(ids))
