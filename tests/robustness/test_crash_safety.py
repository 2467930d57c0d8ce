"""SIGKILL during every command that writes: the inputs stay byte-identical, nothing incomplete looks
like a checkpoint, and the same command run again (training: with --resume auto, from its last complete
step) succeeds and sweeps what the killed run left. One kill point per command here;
`python3 -m tests.robustness.campaign --kills N` tries N random ones."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from colm_core.checkpoint import open_checkpoint
from colm_core.data import token_cache
from colm_core.tokenizer import ByteTokenizer
from tests.conftest import child_environment, tiny_model
from tests.robustness.harness import (
    COMMANDS,
    check_after_kill,
    command_args,
    inputs,
    kill_during,
    make_workspace,
    saved_a_step,
    tree_digest,
)


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
    outcome = kill_during(command_args(command, root, out), out, 0.0, env, root, **({"ready": ready} if ready else {}))
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


KILLED_BETWEEN_TWO_RENAMES = """
import os, sys
from pathlib import Path
from colm_core import checkpoint
from colm_core.run_directory import RunDirectory

checkpoint.rename_unless_taken = lambda src, dst: os._exit(9)  # a SIGKILL once OUT was moved aside
run = RunDirectory(Path(sys.argv[1]))
run.prepare(resuming=False)
run.publish(force=True)
"""


def test_a_training_run_killed_while_replacing_out_leaves_it_to_be_put_back(tmp_path):
    """`train --force` replaces OUT as every writer does: a kill between the two renames leaves OUT in
    .OUT.old-PID-*, which the next sweep puts back (train's own .OUT.old-PID was deleted by it)."""
    from colm_core.checkpoint import CONFIG_FILE, sweep_stale_siblings

    out = tmp_path / "out"
    out.mkdir()
    (out / CONFIG_FILE).write_text("{}")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_TWO_RENAMES, str(out)],
        env=child_environment(None),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 9, killed.stderr
    assert not out.exists() and (tmp_path / "out.partial").is_dir()
    sweep_stale_siblings(out)
    assert (out / CONFIG_FILE).read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.partial"]


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
