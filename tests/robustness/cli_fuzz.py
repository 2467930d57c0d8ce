"""Property-based command lines: hypothesis draws a command, some of its flags and hostile values for
them (negative, zero, huge, NaN, text where a number goes, paths that are no checkpoint), and
`run_main` runs the real entry point in this process. The property: exit 0, or one `colm: error:`
line from an expected failure (a ColmError, not an unexpected exception) on stderr, nothing on
stdout, within the memory and time given."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

from hypothesis import strategies as st

from tests.conftest import colm_in_process
from tests.robustness.hostile import Hang, address_space

NUMBERS = [
    "-1",
    "0",
    "1",
    "2",
    "3",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "9223372036854775807",
    "99999999999999999999999",
    "abc",
    "",
    " ",
    "1,2",
    "0x10",
    "-0",
    "1e-320",
]
TEXTS = ["", "x", "\x00", "é" * 3, "--force", "-o", "../..", "/", "/dev/zero", "a" * 5000, "1:2,3:4", "0:99"]
FLAGS = {  # flag -> values (None: a switch that takes no value)
    "init": {
        "--preset": ["tiny", "small", "nope", ""],
        "--chains": NUMBERS,
        "--heads": NUMBERS + ["2,2", "1,,1"],
        "--kv-heads": NUMBERS,
        "--ffn": NUMBERS,
        "--layers": NUMBERS,
        "--head-dim": NUMBERS,
        "--vocab-size": NUMBERS,
        "--dtype": ["float32", "bf16", "int8", ""],
        "--force": None,
    },
    "expand": {
        "--add-chains": NUMBERS,
        "--heads": NUMBERS,
        "--kv-heads": NUMBERS,
        "--ffn": NUMBERS,
        "--air": None,
        "--init-std": NUMBERS,
        "--seed": NUMBERS,
        "--no-verify": None,
        "--force": None,
    },
    "slice": {"--chains": NUMBERS, "--no-verify": None, "--force": None},
    "eval": {
        "--chains": NUMBERS + ["1,2", "0,1"],
        "--seq-len": NUMBERS,
        "--batch-size": NUMBERS,
        "--max-tokens": NUMBERS,
        "--dtype": ["float32", "fp16", "x"],
        "--device": ["cpu", "cuda", "tpu", ""],
    },
    "generate": {
        "--prompt": TEXTS,
        "--max-new-tokens": NUMBERS,
        "--temperature": NUMBERS,
        "--top-k": NUMBERS,
        "--top-p": NUMBERS,
        "--seed": NUMBERS,
        "--chains": NUMBERS,
        "--switch": TEXTS,
        "--prefill-chains": NUMBERS,
        "--stop": TEXTS,
        "--json": None,
        "--device": ["cpu", "cuda:7"],
    },
    "train": {
        "--steps": NUMBERS,
        "--batch-size": NUMBERS,
        "--seq-len": NUMBERS,
        "--lr": NUMBERS,
        "--grad-accum": NUMBERS,
        "--chain-weights": NUMBERS + ["1,1,1", "0,0,0"],
        "--freeze-chains": NUMBERS,
        "--scales": NUMBERS + ["1,3", "3,1"],
        "--warmup-steps": NUMBERS,
        "--val-fraction": NUMBERS,
        "--eval-windows": NUMBERS,
        "--resume": ["auto", "", "/", "nope"],
        "--force": None,
    },
    "inspect": {"--json": None, "--verify": None},
    "export": {"--format": ["hf", "hf-llama", "gguf", ""], "--dtype": ["bf16", "x"], "--no-verify": None},
}
ALWAYS = {  # what keeps a valid draw small: a bounded run on the workspace's tiny model
    "eval": ["--max-tokens", "200", "--seq-len", "16"],
    "generate": ["--max-new-tokens", "4"],
    "train": ["--steps", "2", "--batch-size", "2", "--seq-len", "8", "--eval-windows", "1"],
}


@st.composite
def command_lines(draw, ckpt: Path, data: Path, out: Path) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    args = [command]
    if command != "init":
        args.append(draw(st.sampled_from([str(ckpt)] * 4 + ["", "/", "/dev/null", str(data), "hf://x/y", "nope"])))
    args += ALWAYS.get(command, [])
    if command == "train":
        args += ["--data", str(data)]
    for flag in draw(st.lists(st.sampled_from(sorted(FLAGS[command])), max_size=4, unique=True)):
        values = FLAGS[command][flag]
        args += [flag] if values is None else [flag, draw(st.sampled_from(values))]
    if command in ("init", "expand", "slice", "export", "train"):
        args += ["-o", str(out)]
    return args


def run_main(
    args: list[str], seconds: int = 120, memory: int = 3 * 2**30, env: dict | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """colm_cli.app.main() on `args` in this process (tests.conftest.colm_in_process): (exit code, stdout,
    stderr). Raises Hang past `seconds`; past `memory` bytes more address space, allocation fails (MemoryError)."""
    handler = signal.getsignal(signal.SIGALRM)
    limits = resource.getrlimit(resource.RLIMIT_AS)

    def alarm(signum, frame):
        raise Hang(f"colm {' '.join(args)}: still running after {seconds} s")

    try:
        signal.signal(signal.SIGALRM, alarm)
        resource.setrlimit(resource.RLIMIT_AS, (address_space() + memory, limits[1]))
        signal.alarm(seconds)
        proc = colm_in_process(*args, env=env, cwd=cwd)
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, limits)
        signal.signal(signal.SIGALRM, handler)
    return proc.returncode, proc.stdout, proc.stderr


def check_outcome(args: list[str], code: int, stdout: str, stderr: str) -> None:
    """The property; raises AssertionError naming the command line."""
    shown = "colm " + " ".join(map(repr, args))
    if code == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code in (1, 2), (shown, code, stderr)
    assert stdout == "", (shown, stdout)
    assert lines and lines[-1].startswith("colm: error: "), (shown, stderr)
    assert "Traceback" not in stderr and "rerun with --debug" not in stderr, (shown, stderr)
