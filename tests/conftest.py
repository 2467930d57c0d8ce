"""Shared test helpers: tiny configs, the real CLI in this process or in a subprocess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from colm_core.config import ColmConfig
from colm_core.model import CoLM

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tests" / "lm_eval_tasks"  # datasets reads the YAML files' data_files from the working directory


def tiny_config(**overrides) -> ColmConfig:
    base = dict(
        vocab_size=97,
        n_layers=2,
        head_dim=8,
        heads=[2, 2, 2],
        kv_heads=[1, 2, 1],
        ffn=[24, 16, 20],
        max_seq_len=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return ColmConfig(**base).validate()


def tiny_model(seed: int = 0, **overrides) -> CoLM:
    from colm_core.tokenizer import ByteTokenizer

    return CoLM(tiny_config(**overrides), ByteTokenizer()).init_weights(std=0.1, seed=seed).eval()


def child_environment(env: dict | None) -> dict:
    """The environment a CLI run sees: this one on the CPU (a test that means to use a GPU passes
    CUDA_VISIBLE_DEVICES in `env`), without TRITON_INTERPRET, which the kernel tests set for this process
    and which would send any Triton launch through the interpreter."""
    inherited = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**inherited, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **(env or {})}


def colm_in_subprocess(
    *args, input: str | None = None, cwd: Path | None = None, check: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real `colm` command line in a subprocess: for tests whose subject is the process itself (its
    exit status, signals, pipes, what it imports, a fresh Hugging Face cache setting)."""
    proc = subprocess.run(
        [sys.executable, "-m", "colm_cli", *map(str, args)],
        input=input,
        cwd=cwd,
        capture_output=True,
        text=True,
        env=child_environment(env),
        timeout=600,
    )
    return checked(proc, check, args)


def colm_in_process(
    *args, input: str | None = None, cwd: Path | None = None, check: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real `colm` entry point, `colm_cli.app.main()`, in this process: what `colm_in_subprocess` gives
    (exit code, stdout, stderr), without starting an interpreter and importing torch each time.

    The command gets its own argv, stdin, stdout, stderr, environment and working directory, and what it
    may change in the process (signal handlers, the app's flags, torch's threads, grad mode and random
    state, the umask) is put back afterwards, so no state leaks from one command into the next test."""
    from colm_cli import app

    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    saved_streams = sys.argv, sys.stdin, sys.stdout, sys.stderr
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, grad, rng = torch.get_num_threads(), torch.is_grad_enabled(), torch.get_rng_state()
    umask = os.umask(0o022)
    os.umask(umask)
    os.environ.clear()
    os.environ.update(child_environment(env))
    if cwd is not None:
        os.chdir(cwd)
    sys.argv, sys.stdin, sys.stdout, sys.stderr = ["colm", *map(str, args)], stdin, stdout, stderr
    app.debug, app.stopped_by = False, None
    try:
        app.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # what the interpreter does with an exception main() lets through (--debug)
        traceback.print_exc()
        code = 1
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.set_rng_state(rng)
        os.umask(umask)
        app.debug, app.stopped_by = False, None
    proc = subprocess.CompletedProcess(["colm", *map(str, args)], code, text_of(stdout), text_of(stderr))
    return checked(proc, check, args)


def text_of(stream: io.TextIOWrapper) -> str:
    return stream.buffer.getvalue().decode("utf-8", errors="replace")


def checked(proc: subprocess.CompletedProcess, check: bool, args) -> subprocess.CompletedProcess:
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


@pytest.fixture
def offline(tmp_path, monkeypatch) -> dict:
    """The Hub switched off and the datasets cache under tmp_path, for child processes (the environment) and
    for this one (the values datasets and huggingface_hub read from the environment when imported)."""
    import datasets.config
    import huggingface_hub.constants

    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.chdir(TASKS_DIR)
    return env
