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


def test_a_new_run_directory_appears_already_locked(tmp_path):
    """OUT.partial is never seen unlocked (the race CI's load found: a second `colm train` locked the first's
    fresh directory before the first did, and both failed); one made meanwhile by another run is kept."""
    import os

    from colm_core.run_directory import create_locked_partial, lock_run

    partial = tmp_path / "runs" / "out.partial"  # in a directory that does not exist yet, as -o may name
    fd = create_locked_partial(partial)
    assert (partial / "steps").is_dir()
    with pytest.raises(ColmError, match="being written by another `colm train`"):
        lock_run(partial)
    with pytest.raises(ColmError, match="being written by another `colm train` that started at the same time"):
        create_locked_partial(partial)
    assert sorted(p.name for p in partial.parent.iterdir()) == ["out.partial"]  # no temporary directory left
    os.close(fd)
    assert os.listdir(partial) == ["steps"]


LOSING = (
    "appeared while this command was writing it",
    "already exists",  # whichever moment the loser noticed
    "being written by another `colm train`",
    "appeared during the run",
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    return root, make_workspace(root)


def race(root, env, commands: list[str], out) -> str:
    """Start the commands at once; assert one wins, the others fail with one line; return the winner."""
    procs = [start(command_args(c, root, out), env, root) for c in commands]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    winners = [c for c, (code, _, _) in zip(commands, results) if code == 0]
    assert len(winners) == 1, results
    for code, stdout, stderr in results:
        if code != 0:
            lines = stderr.strip().splitlines()
            assert code == 2 and stdout == "" and len(lines) == 1, results
            assert any(message in lines[0] for message in LOSING), lines
    verify_digests(open_checkpoint(out))
    assert [p.name for p in root.iterdir() if p.name.startswith(f".{out.name}.")] == []
    return winners[0]


def test_two_commands_at_once(workspace):
    root, env = workspace
    winner = race(root, env, ["expand", "slice"], root / "out")
    assert open_checkpoint(root / "out").config.n_chains == {"expand": 5, "slice": 2}[winner]


def test_two_training_runs_at_once(workspace):
    root, env = workspace
    race(root, env, ["train", "train"], root / "trained")
