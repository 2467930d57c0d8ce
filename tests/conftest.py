"""Shared test helpers: tiny configs, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from colm_core.config import ColmConfig
from colm_core.model import CoLM

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> ColmConfig:
    base = dict(vocab_size=97, n_layers=2, head_dim=8, heads=[2, 2, 2], kv_heads=[1, 2, 1], ffn=[24, 16, 20],
                max_seq_len=64, bos_token_id=1, eos_token_id=2)
    base.update(overrides)
    return ColmConfig(**base).validate()


def tiny_model(seed: int = 0, **overrides) -> CoLM:
    from colm_core.tokenizer import ByteTokenizer

    model = CoLM(tiny_config(**overrides)).init_weights(std=0.1, seed=seed)
    model.tokenizer = ByteTokenizer()
    return model.eval()


def run_cli(*args, input: str | None = None, cwd: Path | None = None, check: bool = False,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `colm` command line in a subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "colm_cli", *map(str, args)], input=input, cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"colm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> None:
    """The CLI's contract for bad input: exit code, a single `colm: error:` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("colm: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert contains in lines[0], lines[0]
    assert proc.stdout == ""


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
