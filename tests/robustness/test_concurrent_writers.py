"""Two commands writing the same output: one wins, the other fails with one line, and what is there
is the winner's complete checkpoint."""

from __future__ import annotations

import pytest

from colm_core.checkpoint import atomic_directory, open_checkpoint, save, verify_digests
from colm_core.errors import ColmError
from tests.conftest import tiny_model
from tests.robustness.harness import command_args, make_workspace, start


def test_the_writer_that_finishes_second_fails_and_keeps_the_first(tmp_path):
    """The race made certain: another writer finishes while this one is still inside its write."""
    out = tmp_path / "out"
    with pytest.raises(ColmError, match="appeared while this command was writing it"):
        with atomic_directory(out) as tmp:
            save(tiny_model(seed=1), tmp / "x")  # this writer's work, in its temporary directory
            save(tiny_model(seed=2), out)  # the other writer, finishing first
    verify_digests(open_checkpoint(out))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the loser's temporary directory is gone


def test_two_commands_at_once(tmp_path):
    root = tmp_path
    env = make_workspace(root)
    out = root / "out"
    procs = {c: start(command_args(c, root, out), env, root) for c in ("expand", "slice")}
    results = {c: (p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for c, p in procs.items()}
    winners = [c for c, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    code, stdout, stderr = results[loser]
    lines = stderr.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1, results
    assert "appeared while this command was writing it" in lines[0] or "already exists" in lines[0], lines
    ckpt = open_checkpoint(out)
    verify_digests(ckpt)
    assert ckpt.config.n_chains == {"expand": 5, "slice": 2}[winners[0]]
    assert [p.name for p in root.iterdir() if p.name.startswith(".out.")] == []
