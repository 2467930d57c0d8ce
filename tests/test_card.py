"""The model card: a metadata header the Hub reads (parsed here by huggingface_hub itself), the chain
table, and the evaluations recorded in the history."""

import itertools

from huggingface_hub import ModelCard

from colm_core.card import model_card, parameters_per_chain
from colm_core.checkpoint import save
from colm_core.evaluate import evaluate
from tests.conftest import tiny_config, tiny_model

HUB_CACHE_SNAPSHOT = "/home/u/.cache/huggingface/hub/models--meta-llama--Llama-3.2-1B/snapshots/" + "a" * 40


def table(text: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after a heading, as one dict per row."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))

    def cells(line):
        return [cell.strip() for cell in line.strip("|").split("|")]

    header = cells(rows[0])
    return [dict(zip(header, cells(row))) for row in rows[2:]]


def test_header_is_hub_metadata_with_tags_by_kind():
    plain = ModelCard(model_card(tiny_config(), []))
    assert plain.data.library_name == "colm" and plain.data.pipeline_tag == "text-generation"
    assert plain.data.tags == ["colm", "chain-of-model"]
    # Nothing known, nothing claimed: no license and no base model in the header.
    assert "license" not in plain.data.to_dict() and "base_model" not in plain.data.to_dict()

    air = ModelCard(model_card(tiny_config(kv_heads=[2, 0, 0], kv_share=True), []))
    assert air.data.tags == ["colm", "chain-of-model", "colm-air"]


def test_base_model_and_license_come_from_the_history():
    history = [
        {"command": "import", "args": {"source": HUB_CACHE_SNAPSHOT}, "inputs": [], "license": "llama3.2"},
        {"command": "expand", "args": {"chains": "4,4"}, "inputs": [{"path": "/data/local-ckpt"}]},
        {"command": "merge", "args": {"other": "hf://acme/donor@v2"}, "inputs": []},
        {"command": "eval", "args": {}, "inputs": [{"path": "/x/hub/models--acme--judge/snapshots/" + "b" * 40}]},
    ]
    card = ModelCard(model_card(tiny_config(), history))
    # Evaluating a model does not derive one from it: acme/judge is no base model.
    assert card.data.base_model == ["meta-llama/Llama-3.2-1B", "acme/donor"]
    assert card.data.license == "llama3.2"
    assert ModelCard(model_card(tiny_config(), history, license="apache-2.0")).data.license == "apache-2.0"
    assert ModelCard(model_card(tiny_config(), history[:2])).data.base_model == "meta-llama/Llama-3.2-1B"


def test_recorded_evaluations_fill_a_table_per_chain_count():
    model = tiny_model(vocab_size=258)
    report = evaluate(model, ["It is a truth universally acknowledged. " * 3], [1, 3], seq_len=32)
    history = [
        {"command": "init", "args": {}, "time": "t0"},
        {"command": "train", "args": {"steps": 10}, "time": "t1", "eval": {"val_loss": {"1": 2.1, "2": 1.95}}},
        {"command": "eval", "args": {"data": "persuasion.txt"}, "time": "t2", **report},
    ]
    text = model_card(model.config, history)
    rows = table(text, "## Evaluation")
    train = {int(r["chains"]): float(r["val_loss"]) for r in rows if r["recorded by"] == "`colm train` t1"}
    assert train == {1: 2.1, 2: 1.95}
    measured = {int(r["chains"]): r for r in rows if r["recorded by"] == "`colm eval` t2"}
    assert sorted(measured) == [1, 3]
    for result in report["results"]:
        row = measured[result["chains"]]
        for metric in ("loss", "ppl", "bits_per_byte"):
            assert abs(float(row[metric]) - result[metric]) < 1e-4 * max(1.0, result[metric])
        assert row["val_loss"] == ""
    assert "## Evaluation" not in model_card(model.config, history[:1])


def test_every_saved_checkpoint_carries_the_card(tmp_path):
    model = tiny_model()
    model.history = [{"command": "train", "args": {}, "eval": {"val_loss": {"3": 1.5}}}]
    path = save(model, tmp_path / "ckpt")
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "colm"
    chains = table(card.text, "# A Chain-of-Model language model")
    assert [int(r["parameters"].replace(",", "")) for r in chains] == parameters_per_chain(model.config)
    assert table(card.text, "## Evaluation") == [{"recorded by": "`colm train`", "chains": "3", "val_loss": "1.5000"}]
