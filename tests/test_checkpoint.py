"""The checkpoint directory: bitwise round trips, sharding, and one-line errors for every kind of damage."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from colm_core.checkpoint import INDEX_FILE, load, open_checkpoint, save
from colm_core.errors import ColmError
from tests.conftest import assert_one_line_error, colm_in_process, tiny_model


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.config == b.config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bitwise(tmp_path, dtype):
    model = tiny_model(kv_share=True, heads=[2, 2, 2], kv_heads=[1, 0, 0]).to(dtype)
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert_same_model(model, loaded)
    assert loaded.tokenizer.kind == "byte"
    ids = torch.randint(0, 97, (1, 5))
    assert torch.equal(model(ids), loaded(ids))


def test_sharded_round_trip(tmp_path):
    model = tiny_model()
    save(model, tmp_path / "m", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "m" / INDEX_FILE).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3 and not (tmp_path / "m" / "model.safetensors").exists()
    assert_same_model(model, load(tmp_path / "m"))


def test_existing_output_needs_force(tmp_path):
    model = tiny_model()
    save(model, tmp_path / "m")
    with pytest.raises(ColmError, match="--force"):
        save(model, tmp_path / "m")
    other = tiny_model(seed=1)
    save(other, tmp_path / "m", force=True)
    assert_same_model(other, load(tmp_path / "m"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_output_directory_has_a_normal_mode(tmp_path):
    import os
    import stat

    save(tiny_model(), tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        config = tiny_model().config
        tokenizer = None  # saving the tokenizer fails after the weights are written

        def state_dict(self):
            return tiny_model().state_dict()

    with pytest.raises(AttributeError):
        save(Broken(), tmp_path / "m", history=[])
    assert list(tmp_path.iterdir()) == []


def test_hf_tokenizer_is_stored_and_used(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["the cat sat on the mat"] * 50, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"])
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    out = colm_in_process("init", "-o", tmp_path / "m", "--tokenizer", tmp_path / "tokenizer.json", check=True)
    assert out.stdout.strip() == str(tmp_path / "m")
    model = load(tmp_path / "m")
    assert model.config.tokenizer == "tokenizer.json" and model.config.vocab_size == tok.get_vocab_size()
    assert model.tokenizer.encode("the cat") == tok.encode("the cat").ids


# --- damage: each gives one line on stderr and exit 2 through the CLI --------------------------


def damaged(tmp_path, how):
    path = tmp_path / "m"
    save(tiny_model(), path, max_shard_bytes=20_000 if how == "missing-shard" else 10**9)
    weights = path / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "wrong-shape":
        state = load(path).state_dict()
        state["layers.0.attn.q.weights.1"] = torch.zeros(3, 3)
        save_file(dict(state), weights)
    elif how == "missing-tensor":
        state = load(path).state_dict()
        del state["layers.1.ffn.up.weights.2"]
        save_file(dict(state), weights)
    elif how == "missing-shard":
        index = json.loads((path / INDEX_FILE).read_text())
        (path / sorted(set(index["weight_map"].values()))[1]).unlink()
    elif how == "unknown-field":
        cfg = json.loads((path / "config.json").read_text())
        cfg["n_experts"] = 8
        (path / "config.json").write_text(json.dumps(cfg))
    elif how == "pickle":
        torch.save(load(path).state_dict(), path / "pytorch_model.bin")
        weights.unlink()
    return path


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated", "truncated"),
        ("wrong-shape", "'layers.0.attn.q.weights.1' has shape [3, 3]"),
        ("missing-tensor", "'layers.1.ffn.up.weights.2' is missing"),
        ("missing-shard", "is missing (listed in model.safetensors.index.json)"),
        ("unknown-field", "unknown field 'n_experts'"),
        ("pickle", "pickle file"),
    ],
)
def test_damaged_checkpoint_gives_one_line_error(tmp_path, how, message):
    path = damaged(tmp_path, how)
    with pytest.raises(ColmError, match="."):
        open_checkpoint(path)
    for command in (["inspect", path], ["eval", path, "--max-tokens", "10"]):
        assert_one_line_error(colm_in_process(*command), 2, message)


# --- digests: recorded at write time, used for provenance, checked by `colm inspect --verify` ------


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_manifest_sha256(path) -> str:
    """The documented whole-weights digest: sha256 of `sha256sum *.safetensors` output, by name."""
    lines = "".join(f"{sha256_of(f)}  {f.name}\n" for f in sorted(path.glob("*.safetensors")))
    return hashlib.sha256(lines.encode()).hexdigest()


def flip_last_byte(path) -> None:
    """Change one weight value: the last byte of a safetensors file is tensor data, so it still opens."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_recorded_digests_are_the_files_sha256(tmp_path):
    save(tiny_model(), tmp_path / "m", max_shard_bytes=20_000)
    recorded = json.loads((tmp_path / "m" / "digests.json").read_text())["sha256"]
    on_disk = {f.name: sha256_of(f) for f in (tmp_path / "m").iterdir() if f.name not in ("README.md", "digests.json")}
    assert recorded == on_disk
    assert {"config.json", "colm_history.json", INDEX_FILE} < recorded.keys()
    assert sum(name.endswith(".safetensors") for name in recorded) > 3


def test_history_takes_the_inputs_recorded_digest_else_hashes_it(tmp_path):
    from colm_core.surgery import slice_

    save(tiny_model(), tmp_path / "a")
    written = weights_manifest_sha256(tmp_path / "a")
    flip_last_byte(tmp_path / "a" / "model.safetensors")  # only a command that reads the file could see this
    slice_(tmp_path / "a", tmp_path / "b", chains=2, verify=False)
    recorded = json.loads((tmp_path / "b" / "colm_history.json").read_text())[-1]["inputs"]
    assert recorded == [{"path": str(tmp_path / "a"), "sha256": written}]

    (tmp_path / "a" / "digests.json").unlink()  # as a checkpoint from before digests were recorded
    slice_(tmp_path / "a", tmp_path / "c", chains=2, verify=False)
    recorded = json.loads((tmp_path / "c" / "colm_history.json").read_text())[-1]["inputs"]
    assert recorded == [{"path": str(tmp_path / "a"), "sha256": weights_manifest_sha256(tmp_path / "a")}]
    assert recorded[0]["sha256"] != written


def test_inspect_verify_rehashes_every_file(tmp_path):
    save(tiny_model(), tmp_path / "m", max_shard_bytes=20_000)
    proc = colm_in_process("inspect", "--verify", "--json", tmp_path / "m", check=True)
    assert json.loads(proc.stdout)["verified"] is True
    assert json.loads(colm_in_process("inspect", "--json", tmp_path / "m", check=True).stdout)["verified"] is False

    shard = sorted((tmp_path / "m").glob("*.safetensors"))[2]
    flip_last_byte(shard)
    assert_one_line_error(
        colm_in_process("inspect", "--verify", tmp_path / "m"), 1, f"{shard} does not match its sha256"
    )
    assert colm_in_process("inspect", tmp_path / "m").returncode == 0  # still a valid checkpoint; only --verify checks

    (tmp_path / "m" / "digests.json").unlink()
    assert_one_line_error(colm_in_process("inspect", "--verify", tmp_path / "m"), 2, "nothing to verify against")


@pytest.mark.parametrize("needed", ["model.safetensors", "config.json", "colm_history.json"])
def test_inspect_verify_fails_where_a_needed_file_is_not_covered(tmp_path, needed):
    """An entry removed from digests.json, then the file edited: not verified, exit 1."""
    save(tiny_model(), tmp_path / "m")
    digests = tmp_path / "m" / "digests.json"
    recorded = json.loads(digests.read_text())
    del recorded["sha256"][needed]
    digests.write_text(json.dumps(recorded))
    proc = colm_in_process("inspect", "--verify", tmp_path / "m")
    assert_one_line_error(proc, 1, f"{tmp_path / 'm' / needed} has no sha256 in digests.json")


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "sub/model.safetensors", ".."])
def test_digests_naming_files_outside_the_checkpoint_are_refused(tmp_path, name):
    save(tiny_model(), tmp_path / "m")
    (tmp_path / "secret").write_text("not the checkpoint's")
    digests = tmp_path / "m" / "digests.json"
    recorded = json.loads(digests.read_text())
    recorded["sha256"][name] = "0" * 64
    digests.write_text(json.dumps(recorded))
    assert_one_line_error(colm_in_process("inspect", "--verify", tmp_path / "m"), 2, "outside the checkpoint")


@pytest.mark.parametrize("copy_file_range", ["kernel", "missing", "fails part-way"])
def test_surgery_copies_stored_bytes_exactly_and_records_their_sha256(tmp_path, monkeypatch, copy_file_range):
    """Slicing copies the kept tensors' bytes file to file (copy_file_range where the system has it, reads
    where it has not or refuses part-way) and hashes them as it goes: the output's tensors equal the input's
    and its recorded digests are its files' sha256, with shards that start tensors at unaligned offsets."""
    import os

    from colm_core.surgery import slice_

    if copy_file_range == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    elif copy_file_range == "fails part-way":
        real = os.copy_file_range
        calls = []

        def flaky(src, dst, count, offset_src=None, offset_dst=None):
            calls.append(count)
            if len(calls) % 2 == 0:
                raise OSError(18, "Invalid cross-device link")
            return real(src, dst, min(count, 5), offset_src, offset_dst)  # a short copy, then a failure

        monkeypatch.setattr(os, "copy_file_range", flaky)
    model = tiny_model()
    save(model, tmp_path / "a", max_shard_bytes=20_000)
    slice_(tmp_path / "a", tmp_path / "b", chains=2, verify=False)
    sliced, full = load(tmp_path / "b").state_dict(), model.state_dict()
    assert sliced and all(torch.equal(tensor, full[name]) for name, tensor in sliced.items())
    recorded = json.loads((tmp_path / "b" / "digests.json").read_text())["sha256"]
    assert {name: sha256_of(tmp_path / "b" / name) for name in recorded} == recorded


def test_hash_range_of_unaligned_spans_over_many_chunks(tmp_path):
    from colm_core.checkpoint import hash_range

    data = bytes(range(256)) * 100
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        for offset, nbytes in [(0, len(data)), (4095, 9000), (5000, 1), (4096, 0), (17, len(data) - 17)]:
            digest = hashlib.sha256()
            hash_range(digest, f.fileno(), offset, nbytes, chunk=4096)
            assert digest.hexdigest() == hashlib.sha256(data[offset : offset + nbytes]).hexdigest()


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", "258"),
        ("kv_share", 1),
        ("rope_theta", "1e4"),
        ("heads", [2, 2.5]),
        ("bos_token_id", True),
        ("rope_scaling", [8]),
        ("tokenizer", 3),
        ("norm_eps", None),
    ],
)
def test_a_config_field_of_the_wrong_type_is_one_line_naming_it(tmp_path, field, value):
    colm_in_process("init", "-o", tmp_path / "m", "--layers", "1", check=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, field: value}))
    assert_one_line_error(colm_in_process("inspect", tmp_path / "m"), 2, f"{field} must be")


def test_config_checks_follow_the_field_types():
    """The check of a field comes from its type, so a new field of any type in use is checked too."""
    from colm_core.config import value_check

    check, admits = value_check(float | None)
    assert check(None) and check(1.5) and check(2) and not check("x") and not check(float("nan")) and not check(True)
    assert admits == "a finite number or null"
    with pytest.raises(TypeError, match="value_check"):
        value_check(set)


@pytest.mark.parametrize(
    "program, recorded",
    [
        ("/usr/bin/colm", True),
        ("/src/colm_cli/__main__.py", True),
        ("/env/lib/pytest/__main__.py", False),
        ("train.py", False),
    ],
)
def test_history_records_the_command_line_of_colm_only(monkeypatch, tmp_path, program, recorded):
    """Another program's `python -m pkg` calling colm_core is no `colm` command line to record."""
    from colm_core.checkpoint import history_entry

    monkeypatch.setattr("sys.argv", [program, "slice", "--chains", "1"])
    argv = history_entry("slice", {})["argv"]
    assert argv == (["colm", "slice", "--chains", "1"] if recorded else None)
