"""What every command shares: where the input comes from, where output goes, how humans are told.

stdout carries only machine output (a checkpoint path, or JSON); everything for humans goes
to stderr. Nothing here imports torch, so `colm --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from colm_core.errors import ColmError
from colm_core.strict_json import finite_json

MAX_PATH_BYTES = 4096  # Linux's PATH_MAX: a longer first line of stdin is not a path


def human_console() -> Console:
    """stderr, for people. A terminal gets rich's defaults; a pipe or a log file gets no colour, and lines
    and tables at their natural width: wrapping at a guessed 80 columns would break them mid-line."""
    if sys.stderr is not None and sys.stderr.isatty():
        return Console(stderr=True)
    return Console(stderr=True, soft_wrap=True, width=1_000_000, no_color=True, highlight=False)


err = human_console()


def input_path(arg: str | None, import_hf: bool = True) -> Path:
    """The input checkpoint: the argument, else the first line of stdin (a pipeline's previous command).

    A Hugging Face directory (or hf:// reference to one) is imported into the cache, unless import_hf is False."""
    return input_paths(arg, import_hf)[0]


def input_paths(arg: str | None, import_hf: bool = True) -> tuple[Path, list[Path]]:
    """input_path, and every local path the command reads it from: the path given (a Hugging Face
    directory or GGUF file) as well as its imported copy, which an output must overlap neither of."""
    if arg is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ColmError("no input checkpoint: pass its path, or pipe one in (e.g. `colm init | colm inspect`)")
        line = sys.stdin.buffer.readline().strip()
        if not line:
            raise ColmError("no input checkpoint: stdin was empty; did the previous command in the pipe fail?")
        arg = os.fsdecode(line)  # as the file system would name it
        if len(line) > MAX_PATH_BYTES or not arg.isprintable():  # binary data, a whole file, ...
            shown = repr(line[:80]) + ("..." if len(line) > 80 else "")
            raise ColmError(
                f"the first line of stdin is not a checkpoint path: {shown} ({len(line):,} bytes); "
                "pipe in the path a colm command prints, or pass it as an argument"
            )
    from colm_core.resolve import resolve_checkpoint, resolve_input

    given = resolve_input(arg)
    path = resolve_checkpoint(given) if import_hf else given
    return path, [given, path]


def output_path(output: Path | None, derived_from: Path, suffix: str, force: bool, inputs=()) -> Path:
    """-o/--output if given, else a new non-clashing name derived from the input; checked before work starts."""
    from colm_core.checkpoint import check_output, default_output
    from colm_core.resolve import output_base

    path = output if output is not None else default_output(output_base(derived_from), suffix)
    return check_output(path, force, inputs)


def emit_path(path: Path) -> None:
    print(path, flush=True)


def emit_json(obj) -> None:
    nulls: list[str] = []
    text = finite_json(obj, indent=2, on_null=nulls.append)
    if nulls:
        err.print(
            f"note: {', '.join(nulls)} {'is' if len(nulls) == 1 else 'are'} not a finite number (the model's "
            "outputs overflowed: its weights have diverged or are broken); written as null in the JSON"
        )
    print(text, flush=True)
