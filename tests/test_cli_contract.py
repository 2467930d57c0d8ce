"""The CLI's promises to a shell: exit codes, interrupts, strict JSON, no leftovers, readable piped output.

Every test runs the real `colm` in a subprocess, with stderr to a pipe (not a terminal)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, assert_one_line_error, colm_in_process, colm_in_subprocess


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (jq, JavaScript) do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def small_checkpoint(tmp_path, name="m"):
    colm_in_process(
        "init", "-o", tmp_path / name, "--layers", "1", "--heads", "2,2", "--head-dim", "8", "--ffn", "32", check=True
    )
    return tmp_path / name


def text_file(tmp_path, chars: int):
    path = tmp_path / "text.txt"
    sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune. "
    path.write_text(sentence * (chars // len(sentence) + 1))
    return path


def hidden_entries(*directories) -> list[str]:
    return sorted(p.name for d in directories for p in d.iterdir() if p.name.startswith("."))


# --- interrupts ------------------------------------------------------------------------------


def start_cli(*args, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "colm_cli", *map(str, args)],
        cwd=cwd,
        env=env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"colm finished before the test could interrupt it:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for colm to start working"
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (utime + stime, from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_ctrl_c_during_eval_exits_130(tmp_path):
    model = small_checkpoint(tmp_path)
    data = text_file(tmp_path, 4_000_000)  # a minute of evaluation or more: it is interrupted long before the end
    proc = start_cli("eval", model, "--data", data, "--seq-len", "64", cwd=tmp_path)
    wait_until(lambda: cpu_seconds(proc.pid) > 3.0, proc)  # past start-up and the torch import: into the work
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "colm: interrupted" and "Traceback" not in err
    assert out == ""


def test_sigterm_during_a_write_exits_130_and_leaves_no_temporary_directory(tmp_path):
    model = small_checkpoint(tmp_path)
    proc = start_cli("expand", model, "-o", tmp_path / "g", cwd=tmp_path)
    wait_until(lambda: any(p.name.startswith(".g.tmp-") for p in tmp_path.iterdir()), proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "colm: interrupted" and out == ""
    assert hidden_entries(tmp_path) == [] and not (tmp_path / "g").exists()


def test_stale_temporary_directories_of_dead_runs_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f".g.tmp-{dead.pid}-abc", f".g.old-{dead.pid}-def", f".g.tmp-{os.getpid()}-live"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    colm_in_process("init", "-o", tmp_path / "g", "--layers", "1", check=True)
    # the dead process's leftovers are gone; a live writer's (this test process) is left alone
    assert hidden_entries(tmp_path) == [f".g.tmp-{os.getpid()}-live"]


def test_replacing_the_working_directory_leaves_nothing_behind(tmp_path):
    model = small_checkpoint(tmp_path)
    proc = colm_in_process("init", "-o", ".", "--force", "--layers", "1", cwd=model, check=True)
    assert proc.stdout.strip() == "."
    assert json.loads((model / "config.json").read_text())["n_layers"] == 1
    assert hidden_entries(model, tmp_path) == []


# --- exit codes and JSON that do not lie ----------------------------------------------------------


def test_nproc_failure_is_one_line_with_the_workers_exit_code(tmp_path):
    model = small_checkpoint(tmp_path)
    proc = colm_in_subprocess(
        "train",
        model,
        "--data",
        tmp_path / "nope.txt",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--nproc",
        "2",
        "-o",
        tmp_path / "x",
    )
    assert_one_line_error(proc, 2, "nope.txt")
    assert not (tmp_path / "x").exists()


def test_divergence_stops_before_a_non_finite_update_is_saved(tmp_path):
    model = small_checkpoint(tmp_path)
    data = text_file(tmp_path, 20_000)
    out = tmp_path / "x"
    # The first update (lr 5e7 in warmup) leaves finite but huge weights and a finite loss; the second
    # step's gradients overflow. Without a check, that update made every weight NaN and was published.
    proc = colm_in_process(
        "train",
        model,
        "--data",
        data,
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--lr",
        "1e9",
        "--log-every",
        "1",
        "-o",
        out,
    )
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("colm:")]
    assert len(errors) == 1 and errors[0].startswith("colm: error: non-finite"), proc.stderr
    assert not out.exists()
    for line in (tmp_path / "x.partial" / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    # Whatever step checkpoint the run kept holds finite weights, and the error names it.
    steps = sorted((tmp_path / "x.partial" / "steps").glob("step-*"))
    for step in steps:
        assert all(t.isfinite().all() for t in load_file(step / "model" / "model.safetensors").values())
    if steps:
        assert steps[-1].name in errors[0]


def test_eval_of_a_diverged_model_prints_strict_json(tmp_path):
    model = small_checkpoint(tmp_path)
    weights = load_file(model / "model.safetensors")
    name = next(n for n in weights if "lm_head" in n)
    weights[name][0, 0] = float("inf")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    proc = colm_in_process("eval", model, "--data", text_file(tmp_path, 500), "--seq-len", "32", check=True)
    report = strict_json(proc.stdout)
    assert report["results"][0]["loss"] is None
    assert "written as null" in proc.stderr


# --- flags and messages ------------------------------------------------------------------------


def test_version_and_short_help():
    from colm_core import __version__

    proc = colm_in_process("--version", check=True)
    assert proc.stdout == f"colm {__version__}\n"
    assert "Commands" in colm_in_process("-h", check=True).stdout
    assert "--max-new-tokens" in colm_in_process("generate", "-h", check=True).stdout


def test_debug_is_a_top_level_option_and_not_taken_from_values(tmp_path):
    model = small_checkpoint(tmp_path)
    assert "--debug" in colm_in_process("--help", check=True).stdout
    # "--debug" as an option's value is that value
    proc = colm_in_process("generate", model, "--prompt", "--debug", "--max-new-tokens", "2", "--json", check=True)
    assert json.loads(proc.stdout)["prompt"] == "--debug"
    # after a command, it is an unknown option of that command
    assert_one_line_error(colm_in_process("generate", model, "--debug", "--prompt", "x"), 2, "No such option")
    for proc in (
        colm_in_process("--debug", "generate", model, "--prompt", "x", "--chains", "9"),
        colm_in_process("generate", model, "--prompt", "x", "--chains", "9", env={"COLM_DEBUG": "1"}),
    ):
        assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_errors_read_well(tmp_path):
    proc = colm_in_process("slice", tmp_path)
    assert_one_line_error(proc, 2, "Missing option '--chains'; see `colm slice --help`")
    # One spelling of arguments in usage lines: upper case, {REQUIRED} and [OPTIONAL] as Typer marks them
    usage = {
        cmd: next(
            line.split(cmd, 1)[1].split()
            for line in colm_in_process(cmd, "--help", check=True).stdout.splitlines()
            if "Usage:" in line
        )
        for cmd in ("import", "eval", "pull")
    }
    assert usage == {
        "import": ["[OPTIONS]", "{SOURCE}"],
        "eval": ["[OPTIONS]", "[CKPT]"],
        "pull": ["[OPTIONS]", "{REPO_ID}"],
    }


@pytest.mark.parametrize("first_line", ["a" * 10_000_000, "\x00\x01\x89PNG\x1a binary"], ids=["10MB", "binary"])
def test_a_first_line_of_stdin_that_is_no_path_is_shown_short(first_line):
    proc = colm_in_process("inspect", input=first_line + "\nmore\n")
    assert_one_line_error(proc, 2, "the first line of stdin is not a checkpoint path")
    assert len(proc.stderr) < 400 and "\x00" not in proc.stderr


def test_piped_training_output_has_a_line_per_logged_step_and_unbroken_lines(tmp_path):
    model = small_checkpoint(tmp_path)
    out = tmp_path / ("a-run-with-a-long-name-" + "x" * 40)
    proc = colm_in_process(
        "train",
        model,
        "--data",
        text_file(tmp_path, 20_000),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--log-every",
        "2",
        "--eval-every",
        "0",
        "--eval-windows",
        "2",
        "-o",
        out,
        check=True,
    )
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("step ") and "/4:" in line] == [
        "step 2/4",
        "step 4/4",
    ]
    title = next(line for line in lines if str(out) in line)
    assert title.strip().endswith("on 1 process(es)") and len(title) > 100
    assert "\x1b[" not in proc.stderr  # no colour codes in a pipe
