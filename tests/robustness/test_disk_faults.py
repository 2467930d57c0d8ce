"""Writes that fail part-way, a file-size limit (what a full disk does to a write) and a read-only
output directory, end in one line naming the problem and the fix, and leave nothing half-written."""

from __future__ import annotations

import os
import resource

import pytest

from tests.robustness.harness import command_args, inputs, make_workspace, start, tree_digest

# root ignores directory permissions: a read-only directory is only read-only without its capabilities
WITHOUT_CAPABILITIES = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    env = make_workspace(root)
    return root, env, {str(p): tree_digest(p) for p in inputs(root)}


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # the weights are larger: the write fails


def assert_clean_failure(proc, code: int, contains: str) -> None:
    out, err = proc.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code and out == "", (proc.returncode, err)
    assert len(lines) == 1 and lines[0].startswith("colm: error: ") and contains in lines[0], err


@pytest.mark.parametrize("command", ["expand"])  # every writer shares atomic_directory and os_error
def test_a_file_size_limit_fails_cleanly_and_keeps_nothing(workspace, command):
    root, env, before = workspace
    out = root / f"full-{command}"
    proc = start(command_args(command, root, out), env, root, preexec_fn=limit_file_size)
    assert_clean_failure(proc, 1, "File too large; free disk space")
    assert [p.name for p in root.iterdir() if out.name in p.name] == []
    assert {str(p): tree_digest(p) for p in inputs(root)} == before


def test_a_read_only_output_directory_fails_cleanly(workspace):
    root, env, before = workspace
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    proc = start(command_args("slice", root, read_only / "out"), env, root, wrapper=WITHOUT_CAPABILITIES)
    assert_clean_failure(proc, 2, "Permission denied")
    assert list(read_only.iterdir()) == []
    assert {str(p): tree_digest(p) for p in inputs(root)} == before
