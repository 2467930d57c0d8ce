"""Fault injection for the commands that write: a workspace of inputs, the commands over it, a
SIGKILL at a chosen moment, and the checks that must hold after any kill.

A kill point is a delay after the command's first write appeared (its temporary directory beside
the output, or OUT.partial for training): the earlier seconds only import Python modules. Whatever
the moment, afterwards
  - the inputs are byte-identical to before,
  - every directory holding a config.json (the file written last) is complete: it opens, and each
    file matches the sha256 that digests.json recorded,
  - the same command run again succeeds (training with --resume auto) and leaves no temporary
    directory behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import child_environment, tiny_model
from tests.robustness.cli_fuzz import run_main

COMMANDS = ("train", "expand", "slice", "import", "export", "pull")
TRAIN = [
    "--steps",
    "6",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--save-every",
    "1",
    "--log-every",
    "1",
    "--eval-windows",
    "1",
]
HUB_REPO = "colm-test/tiny"


def make_workspace(root: Path) -> dict:
    """Inputs for every command: a 3-chain checkpoint, a Hugging Face Llama directory, a Hub cache
    holding a colm checkpoint (read offline), and text to train on. Returns the environment to run in."""
    from colm_core.checkpoint import save
    from colm_core.export import export

    root.mkdir(parents=True, exist_ok=True)
    save(tiny_model(vocab_size=258), root / "ckpt")  # the byte tokenizer's 258 ids
    one = root / "one-chain"
    save(tiny_model(heads=[2], kv_heads=[1], ffn=[24]), one)
    export(one, root / "hf", fmt="hf-llama", verify=False)
    shutil.rmtree(one)
    snapshot = root / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(root / "ckpt", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (root / "data.txt").write_text("It is a truth universally acknowledged, that a single man. " * 200)
    return {
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "COLM_CACHE_DIR": str(root / "cache"),
        "HOME": str(root),
    }


def inputs(root: Path) -> list[Path]:
    return [root / "ckpt", root / "hf", root / "hub", root / "data.txt"]


def command_args(command: str, root: Path, out: Path, verify: bool = False) -> list[str]:
    check = [] if verify else ["--no-verify"]
    return {
        "train": ["train", root / "ckpt", "--data", root / "data.txt", *TRAIN, "-o", out],
        "expand": ["expand", root / "ckpt", "--add-chains", "2", *check, "-o", out],
        "slice": ["slice", root / "ckpt", "--chains", "2", *check, "-o", out],
        "import": ["import", root / "hf", *check, "-o", out],
        "export": ["export", root / "ckpt", "--format", "hf", *check, "-o", out],
        "pull": ["pull", HUB_REPO, "-o", out],
    }[command]


def tree_digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `path` (a symlink: its target's text)."""
    out = {}
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_symlink():
            out[str(p.relative_to(path.parent))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(path.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def start(args: list, env: dict, cwd: Path, preexec_fn=None, wrapper: list[str] = ()) -> subprocess.Popen:
    """`colm ARGS` in a subprocess (under `wrapper`, e.g. setpriv), stdout and stderr piped."""
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", "colm_cli", *map(str, args)],
        cwd=cwd,
        env=child_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def writing(out: Path) -> bool:
    """Whether a command writing `out` has begun to: its temporary directory, OUT.partial, or OUT exists."""
    return out.exists() or any(
        p.name.startswith(f".{out.name}.") or p.name == f"{out.name}.partial" for p in out.parent.iterdir()
    )


def saved_a_step(out: Path) -> bool:
    """Whether a run can resume: OUT.partial/steps holds a step-N directory marked COMPLETE. A step still in
    its temporary directory (.step-N.tmp-*) does not count, whatever it holds: it was never renamed into place."""
    steps = out.with_name(out.name + ".partial") / "steps"
    return (
        out.exists()
        or steps.is_dir()
        and any(p.name.startswith("step-") and (p / "COMPLETE").is_file() for p in steps.iterdir())
    )


def kill_during(args: list, out: Path, delay: float, env: dict, cwd: Path, timeout: float = 300, ready=writing) -> str:
    """Run the command and SIGKILL it `delay` seconds after ready(out) (default: its first write appeared).
    Returns "killed", or "finished" when it ended first (then it must have succeeded)."""
    proc = start(args, env, cwd)
    deadline = time.monotonic() + timeout
    while not ready(out) and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"colm {' '.join(map(str, args))}: no output after {timeout} s")
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode == -signal.SIGKILL:
        return "killed"
    assert proc.returncode == 0, err
    return "finished"


def assert_nothing_incomplete_looks_valid(root: Path, skip: list[Path]) -> int:
    """Every directory below root holding a config.json opens and matches its recorded digests (an
    export, a Hugging Face directory, has no digests: it must open as one). Returns how many there are."""
    from colm_core.checkpoint import open_checkpoint, verify_digests
    from colm_core.llama import is_hf_model_dir, open_hf_dir, source_names

    found = 0
    for config in root.rglob("config.json"):
        d = config.parent
        if any(d == s or s in d.parents for s in skip):
            continue
        if is_hf_model_dir(d):
            source_names(open_hf_dir(d))
        else:
            verify_digests(open_checkpoint(d))
        found += 1
    return found


def leftovers(root: Path, out: Path) -> list[str]:
    """Temporary files and directories a finished command should not leave: .OUT.tmp-*, .OUT.old-*,
    step temporaries, token-cache temporaries."""
    found = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    found += [str(p) for p in (root / "cache").rglob("*.tmp")] if (root / "cache").is_dir() else []
    steps = out / "steps"
    found += [p.name for p in steps.iterdir() if p.name.startswith(".")] if steps.is_dir() else []
    return found


def check_after_kill(command: str, root: Path, out: Path, env: dict, before: dict) -> None:
    """The guarantees after a kill (module docstring), including the rerun; raises AssertionError."""
    resumable = saved_a_step(out) and not out.exists()
    after = {str(p): tree_digest(p) for p in inputs(root)}
    assert after == before, f"{command}: an input changed"
    assert_nothing_incomplete_looks_valid(root, skip=inputs(root))
    args = command_args(command, root, out)
    if command == "train":
        args += ["--resume", "auto"]
    if out.exists() and command != "train":
        args += ["--force"]  # a kill after the rename: the output is complete, replace it
    if command in ("train", "pull"):  # a process of its own: signal handlers; the Hub cache is fixed at import
        proc = start(args, env, root)
        stdout, err = proc.communicate(timeout=600)
        code = proc.returncode
    else:
        code, stdout, err = run_main(list(map(str, args)), env=env, cwd=root)
    assert code == 0, f"{command} rerun: {err}"
    assert stdout.strip() == str(out), stdout
    if command == "train" and resumable:
        assert "resuming from" in err, err
    assert leftovers(root, out) == [], leftovers(root, out)
    assert assert_nothing_incomplete_looks_valid(root, skip=inputs(root)) >= 1
    if command == "train":
        from colm_core.checkpoint import open_checkpoint

        assert open_checkpoint(out).history[-1]["eval"]["steps"] == 6
