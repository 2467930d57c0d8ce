"""The directory of a training run: OUT.partial/ while it goes on, then renamed to OUT.

OUT.partial is visible, and no checkpoint (no config.json at its top) until the run has finished:

    OUT.partial/metrics.jsonl                   every logged value, one JSON object per line
    OUT.partial/steps/step-0000050/model/       a full colm checkpoint
    OUT.partial/steps/step-0000050/optimizer.safetensors, trainer_state.json
    OUT.partial/steps/step-0000050/COMPLETE     written last; each step directory is itself renamed into place

At the end the final checkpoint is written into OUT.partial, config.json last, which is then
renamed to OUT: OUT exists only when the run succeeded. One run holds OUT.partial at a time (an
flock). `--resume` continues from a COMPLETE step, of a run made with the same options and data.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from colm_core.checkpoint import (
    atomic_directory,
    publish_directory,
    rename_unless_taken,
    sweep_stale_siblings,
    temporary_sibling,
)
from colm_core.config import read_json
from colm_core.errors import ColmError
from colm_core.options import TrainOptions
from colm_core.strict_json import finite_json

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
STEPS_DIR = "steps"


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_steps(run_dir: Path) -> list[Path]:
    """Step checkpoints of a run that were completely written, oldest first."""
    steps = run_dir / STEPS_DIR
    if not steps.is_dir():
        return []
    return sorted(p for p in steps.iterdir() if p.name.startswith("step-") and (p / MARKER).is_file())


def find_resume(resume: str, partial: Path) -> Path | None:
    """The step checkpoint to continue from: `auto` (newest in OUT.partial, or none), a step or run directory."""
    if resume == "auto":
        found = complete_steps(partial)
        return found[-1] if found else None
    path = Path(resume)
    if (path / MARKER).is_file():
        return path
    found = complete_steps(path)
    if not found:
        raise ColmError(
            f"--resume {resume}: no complete step checkpoint there; give a steps/step-N directory "
            "or a run directory holding one"
        )
    return found[-1]


def read_trainer_state(step_dir: Path) -> dict:
    return read_json(step_dir / STATE_FILE, "resume from another step checkpoint, or start a new run without --resume")


# Options a resumed run may change: how it runs and reports, not what it computes. --steps may grow.
CHANGEABLE_ON_RESUME = (
    "steps",
    "dtype",
    "device",
    "compile",
    "strategy",
    "log_every",
    "eval_every",
    "eval_windows",
    "save_every",
    "keep_checkpoints",
)
# --data is compared by what it holds (check_resume_data), not by how the paths were spelled.
COMPARED_BY_CONTENT = ("data",)


def check_resume(step_dir: Path, opts: TrainOptions) -> None:
    """A resumed run continues the same run: same data, batches, loss and optimisation, and not past --steps."""
    saved = read_trainer_state(step_dir)
    now = json.loads(json.dumps(dataclasses.asdict(opts)))  # lists and None as the saved JSON holds them
    shown = lambda v: "unset" if v is None else ",".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    changed = [
        f"--{name.replace('_', '-')} {shown(saved['options'].get(name))} -> {shown(value)}"
        for name, value in now.items()
        if name not in CHANGEABLE_ON_RESUME + COMPARED_BY_CONTENT and saved["options"].get(name) != value
    ]
    if changed:
        raise ColmError(
            f"--resume {step_dir}: that run used other settings ({'; '.join(changed)}); resume with "
            "the same ones, or start a new run without --resume"
        )
    if saved["step"] > opts.steps:
        raise ColmError(
            f"--resume {step_dir}: that checkpoint is at step {saved['step']}, beyond --steps "
            f"{opts.steps}; give --steps {saved['step']} or more"
        )


def check_resume_data(step_dir: Path, opts: TrainOptions, digest: str) -> None:
    """The resumed run reads the same token stream: the same files' contents and tokenizer (data_digest)."""
    saved = read_trainer_state(step_dir)
    if saved.get("data_sha256") != digest:
        was = " ".join(map(str, saved["options"].get("data") or ["(the embedded corpus)"]))
        now = " ".join(map(str, opts.data or ["(the embedded corpus)"]))
        raise ColmError(
            f"--resume {step_dir}: that run trained on other data (--data {was} then, {now} now: the "
            "files' contents or the tokenizer differ); resume with the same data, or start a new run "
            "without --resume"
        )


def lock_run(partial: Path) -> int:
    """Hold OUT.partial for this run (an flock, released when the process ends, killed or not): a
    second `colm train` writing the same output is refused instead of mixing its steps in."""
    fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ColmError(
            f"{partial} is being written by another `colm train` that is still running; wait for it "
            "to finish, or choose another -o/--output"
        ) from None
    return fd


def create_locked_partial(partial: Path) -> int:
    """Make OUT.partial for a new run, already locked and holding steps/: it is built under a temporary
    name and renamed into place, so another `colm train` never finds it unlocked (and takes it for a
    stopped run), and a rename onto the non-empty OUT.partial of a run that got there first fails."""
    partial.parent.mkdir(parents=True, exist_ok=True)  # -o may name a directory that does not exist yet
    sweep_stale_siblings(partial)
    tmp = temporary_sibling(partial, "tmp")
    try:
        (tmp / STEPS_DIR).mkdir()
        fd = lock_run(tmp)
        try:
            if not rename_unless_taken(tmp, partial):
                raise ColmError(
                    f"{partial} is being written by another `colm train` that started at the same "
                    "time; wait for it to finish, or choose another -o/--output"
                )
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fd


class RunDirectory:
    """OUT.partial of one run, as rank 0 keeps it: locked, its steps, its metrics, and OUT at the end."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.partial = partial_dir(self.out)
        self.lock: int | None = None

    def lock_existing(self) -> None:
        """Hold an OUT.partial that is already there (a run to resume, or to replace with --force)."""
        if self.partial.exists():
            self.lock = lock_run(self.partial)

    def prepare(self, resuming: bool) -> None:
        """Make OUT.partial (fresh, or kept when resuming) without the temporaries a kill left in steps/."""
        if self.lock is None:  # no OUT.partial when the run started: make it, locked
            self.lock = create_locked_partial(self.partial)
        elif not resuming:  # --force: start over, in the locked directory
            for entry in self.partial.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (self.partial / STEPS_DIR).mkdir(parents=True, exist_ok=True)
        complete = set(complete_steps(self.partial))
        for leftover in (self.partial / STEPS_DIR).iterdir():  # a kill -9 during a save leaves temporaries
            if leftover not in complete:
                shutil.rmtree(leftover)
        if not resuming:
            (self.partial / METRICS_FILE).write_text("")

    def step_path(self, step: int) -> Path:
        return self.partial / STEPS_DIR / step_name(step)

    def complete_steps(self) -> list[Path]:
        return complete_steps(self.partial)

    def save_step(self, step: int, write: Callable[[Path], None], keep: int) -> Path:
        """Write step `step` (write(directory) fills it), marked COMPLETE last and renamed into place; then
        remove all but the newest `keep` complete steps."""
        path = self.step_path(step)
        with atomic_directory(path) as tmp:
            write(tmp)
            (tmp / MARKER).write_text(f"step {step}\n")  # last: the directory is whole
        for old in self.complete_steps()[:-keep]:
            shutil.rmtree(old)
        return path

    def log(self, record: dict) -> None:
        with open(self.partial / METRICS_FILE, "a") as f:
            f.write(finite_json(record) + "\n")

    def keep_metrics_until(self, step: int) -> None:
        """Drop the metrics of steps after `step` (resuming from it: they will be logged again)."""
        metrics = self.partial / METRICS_FILE
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        metrics.write_text("".join(line + "\n" for line in kept))

    def publish(self, force: bool) -> None:
        """Rename OUT.partial, which now holds the final checkpoint, to OUT, as every command publishes its
        output (a replaced OUT is removed only after)."""
        if not publish_directory(self.partial, self.out, force):
            raise ColmError(f"{self.out} appeared during the run; the result stays in {self.partial}")

    def close(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
