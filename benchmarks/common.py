"""Shared benchmark plumbing: flags, interleaved measurements, a printed table, a JSON file.

Every benchmark runs as `python -m benchmarks.NAME [flags]` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Public-domain novels the experiments train on (Jane Austen's six, and Bierce's Devil's Dictionary as
# a second author): plain text files, which a checkout does not ship. Put them in data/books/ of the
# repository (git-ignored), or name their directory in COLM_BOOKS.
BOOKS = Path(os.environ.get("COLM_BOOKS") or Path(__file__).resolve().parents[1] / "data" / "books")


def parser(doc: str, name: str, threads: int | None = None) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --out (its JSON file) and --threads (torch threads).

    `--output` is kept as an alias of `--out`. Call `set_threads(args.threads)` after parsing."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        "--output",
        dest="out",
        type=Path,
        default=RESULTS / f"{name}.json",
        help="JSON file to write (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=threads, help="torch threads (0 or unset: torch's choice; default: %(default)s)"
    )
    return p


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list]:
    """The values returned by each callable over `repeats` rounds, run round-robin so that machine
    noise hits all of them alike; each is first called `warmup` times (allocator, compilation)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(fn())
    return samples


def timed(fn: Callable, sync: Callable | None = None) -> Callable[[], float]:
    """A callable returning the seconds one call of `fn` takes; `sync` (e.g. torch.cuda.synchronize)
    runs before starting and before stopping the clock so that queued GPU work is counted."""

    def run() -> float:
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        return time.perf_counter() - start

    return run


def interleaved_seconds(
    fns: dict, repeats: int, warmup: int = 1, sync: Callable | None = None
) -> dict[str, list[float]]:
    """Seconds of every interleaved call of each callable."""
    return interleaved({name: timed(fn, sync) for name, fn in fns.items()}, repeats, warmup)


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1, sync: Callable | None = None) -> dict[str, float]:
    """Median seconds of each callable, timed interleaved."""
    return medians(interleaved_seconds(fns, repeats, warmup, sync))


def report(
    title: str, columns: list[str], rows: list[list], payload: dict, out: Path, notes: Sequence[str] = ()
) -> None:
    """Print the title, a table (floats with 3 decimals, anything else as given) and `notes` to
    stdout, and write the JSON payload to `out`."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for i, c in enumerate(columns):  # the first column names the row
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    print(title)  # a plain line: a table's own title would wrap to the table's width
    console = Console()
    # Never squeeze columns into a narrow (or piped, 80-column) console: wide is better than truncated.
    console.width = max(console.width, console.measure(table, options=console.options.update_width(1000)).maximum)
    console.print(table)
    for note in notes:
        print(note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
