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
    """Run the real `colm` command line in a subprocess, on the CPU and with compiled Triton.

    The CLI tests prove the same things on every machine: the child sees no GPU (a test that means
    to run on one passes CUDA_VISIBLE_DEVICES in `env`) and no TRITON_INTERPRET, which the kernel
    tests set for this process and which would send any Triton launch through the interpreter."""
    inherited = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env = {**inherited, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "colm_cli", *map(str, args)], input=input, cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"colm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def select_kernels(monkeypatch, backend: str | None) -> None:
    """COLM_KERNELS=backend for the rest of the test (None: unset, the default), undoing earlier patches."""
    monkeypatch.undo()
    if backend:
        monkeypatch.setenv("COLM_KERNELS", backend)
    else:
        monkeypatch.delenv("COLM_KERNELS", raising=False)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> None:
    """The CLI's contract for bad input: exit code, a single `colm: error:` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("colm: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert contains in lines[0], lines[0]
    assert proc.stdout == ""


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; deselected where there is none")


def pytest_collection_modifyitems(config, items):
    """GPU-only tests (CUDA kernels against the reference) are deselected, not skipped, on a machine
    without CUDA: pytest's summary counts them as deselected."""
    if torch.cuda.is_available():
        return
    gpu_only = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_only:
        config.hook.pytest_deselected(items=gpu_only)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
