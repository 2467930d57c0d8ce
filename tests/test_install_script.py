"""scripts/install.sh picks where to install: the active environment, else a `.venv` in the repository.

A stand-in `python3` on PATH records each call, so the decision is tested without installing anything."""

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

FAKE_PYTHON = """#!/bin/sh
echo "$0 $*" >> "$CALLS"
case "$*" in
  *sys.prefix*) exit "$FAKE_IN_VENV" ;;  # the check: exit 0 means "not inside a virtual environment"
  "-m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python3" ;;
esac
exit 0
"""


def run_install(tmp_path: Path, in_venv: bool, **env) -> list[str]:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo / "scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    calls = tmp_path / "calls"
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "COLM_NEWEST")}
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env={
            **base,
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "FAKE_IN_VENV": "1" if in_venv else "0",
            **env,
        },
    )
    assert proc.returncode == 0, proc.stderr
    return calls.read_text().splitlines(), proc.stderr


def test_outside_any_environment_it_creates_and_uses_dot_venv(tmp_path):
    calls, stderr = run_install(tmp_path, in_venv=False)
    venv = tmp_path / "repo" / ".venv"
    assert any(c.endswith(f"-m venv {venv}") for c in calls), calls
    pip = [c for c in calls if " -m pip install " in c]
    assert len(pip) == 1 and pip[0].startswith(f"{venv}/bin/python3 ") and "torch==2.13.0" in pip[0], calls
    assert "source .venv/bin/activate" in stderr


def test_inside_an_active_environment_it_installs_there(tmp_path):
    for env in ({}, {"VIRTUAL_ENV": str(tmp_path / "env")}, {"CONDA_PREFIX": str(tmp_path / "conda")}):
        shutil.rmtree(tmp_path, ignore_errors=True)
        tmp_path.mkdir()
        calls, _ = run_install(tmp_path, in_venv=not env, **env)
        assert not (tmp_path / "repo" / ".venv").exists()
        pip = [c for c in calls if " -m pip install " in c]
        assert len(pip) == 1 and pip[0].startswith(f"{tmp_path}/bin/python3 "), (env, calls)


def test_test_tools_come_at_the_recorded_versions_unless_the_newest_are_asked_for(tmp_path):
    calls, _ = run_install(tmp_path, in_venv=True)
    pip = next(c for c in calls if " -m pip install " in c)
    assert f"--constraint {tmp_path}/repo/scripts/test-constraints.txt" in pip and "--upgrade" not in pip
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    calls, stderr = run_install(tmp_path, in_venv=True, COLM_NEWEST="1")
    pip = next(c for c in calls if " -m pip install " in c)
    assert "--constraint" not in pip and "--upgrade --upgrade-strategy eager" in pip and "torch==2.13.0" in pip
    assert "COLM_NEWEST" in stderr


def test_the_constraints_pin_every_test_tool_but_not_colm_or_torch():
    lines = (REPO / "scripts" / "test-constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    names = {name.lower().replace("_", "-") for name in pins}
    assert {"transformers", "kernels", "lm-eval", "peft", "hypothesis", "pytest", "triton"} <= names
    assert all(version[0].isdigit() for version in pins.values())
    assert "torch" not in names and "colm" not in names
