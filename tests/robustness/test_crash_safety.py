"""SIGKILL during every command that writes: the inputs stay byte-identical, nothing incomplete looks
like a checkpoint, and the same command run again (training: with --resume auto, from its last complete
step) succeeds and sweeps what the killed run left. One kill point per command here;
`python3 -m tests.robustness.campaign --kills N` tries N random ones."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from colm_core.checkpoint import open_checkpoint
from colm_core.data import token_cache
from colm_core.tokenizer import ByteTokenizer
from tests.conftest import tiny_model
from tests.robustness.harness import (COMMANDS, check_after_kill, command_args, inputs, kill_during, make_workspace,
                                      saved_a_step, tree_digest)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    env = make_workspace(root)
    return root, env, {str(p): tree_digest(p) for p in inputs(root)}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_kill_leaves_inputs_intact_and_no_half_written_checkpoint(workspace, command):
    root, env, before = workspace
    out = root / f"out-{command}"
    # training: killed once a step checkpoint is complete, so --resume auto has one to continue from
    ready = saved_a_step if command == "train" else None
    outcome = kill_during(command_args(command, root, out), out, 0.0, env, root,
                          **({"ready": ready} if ready else {}))
    check_after_kill(command, root, out, env, before)
    assert outcome in ("killed", "finished")
    assert open_checkpoint(out) if command != "export" else (out / "config.json").is_file()
    shutil.rmtree(out)


def test_the_only_copy_left_by_a_kill_between_two_renames_is_restored(tmp_path):
    """--force replaces OUT with two renames (OUT aside, the new one in); a kill between them leaves OUT
    only in .OUT.old-PID-*: the next write of OUT puts it back before sweeping."""
    from colm_core.checkpoint import CONFIG_FILE, sweep_stale_siblings

    dead = subprocess.Popen(["true"])
    dead.wait()
    kept = tmp_path / f".out.old-{dead.pid}-x" / "out"
    kept.mkdir(parents=True)
    (kept / CONFIG_FILE).write_text("{}")
    sweep_stale_siblings(tmp_path / "out")
    assert (tmp_path / "out" / CONFIG_FILE).read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_token_cache_temporaries_of_killed_writers_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("COLM_CACHE_DIR", str(tmp_path / "cache"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    tokens = tmp_path / "cache" / "tokens"
    tokens.mkdir(parents=True)
    (tokens / f".abc.{dead.pid}.tmp").write_bytes(b"partial")
    (tmp_path / "a.txt").write_text("some text")
    token_cache([tmp_path / "a.txt"], ByteTokenizer())
    assert [p.name for p in tokens.iterdir() if p.name.endswith(".tmp")] == []


def test_the_history_of_a_diverged_run_is_strict_json(tmp_path):
    """A stopped or diverged run records NaN losses; strict JSON readers (and the Hub) reject bare NaN."""
    import json

    from colm_core.checkpoint import HISTORY_FILE, write_history

    write_history(tmp_path, [{"command": "train", "eval": {"val_loss": {"1": float("nan"), "2": float("inf")}}}])
    strict = json.loads((tmp_path / HISTORY_FILE).read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict[0]["eval"]["val_loss"] == {"1": None, "2": None}


def test_config_json_appears_only_whole(tmp_path, monkeypatch):
    """config.json, written last, makes a directory a checkpoint: it must appear by a rename, so that a
    kill in the middle of writing it (seen once in `pull`'s copy) leaves no half-written one."""
    from colm_core import checkpoint

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tiny_model(), tmp_path / "m")
    assert not list(tmp_path.rglob("config.json"))
