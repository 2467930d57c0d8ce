"""The real `colm` command line, in subprocesses, as a user types it."""

import json

from tests.conftest import REPO, assert_one_line_error, colm_in_process


def test_help_lists_commands():
    proc = colm_in_process("--help", check=True)
    for command in ("init", "train", "expand", "slice", "eval", "generate", "serve", "inspect", "import", "export"):
        assert command in proc.stdout


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; import colm_cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_commands_do_not_import_triton_unless_flops_are_counted():
    """torch.utils.flop_counter imports triton (about 75 MiB, 0.2 s): colm's FLOP formulas are registered
    when something imports the counter, and then counted through the chain linear's custom ops."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import colm_core.train, colm_core.generation, colm_core.evaluate, colm_core.surgery\n"
        "print('triton' in sys.modules)\n"
        "import torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "from colm_kernels.chain_linear import op\n"
        "x, w = torch.randn(3, 4, requires_grad=True), [torch.randn(2, 4)]\n"
        "with FlopCounterMode(display=False) as counter:\n"
        "    op.chain_linear(x, w, 'torch')\n"
        "print(counter.get_total_flops())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", str(2 * 3 * 2 * 4)]


def test_in_process_runs_leave_no_state_behind(tmp_path):
    """The suite runs most commands in its own process: each must leave the process as it found it."""
    import os
    import signal

    import torch

    from colm_cli import app

    def state():
        return (
            os.getcwd(),
            dict(os.environ),
            {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
            torch.get_num_threads(),
            torch.is_grad_enabled(),
            app.debug,
            app.stopped_by,
        )

    before, rng = state(), torch.get_rng_state()
    data = tmp_path / "text.txt"
    data.write_text("It is a truth universally acknowledged. " * 40)
    colm_in_process("init", "-o", "m", "--layers", "1", cwd=tmp_path, env={"COLM_DEBUG": "1"}, check=True)
    colm_in_process(
        "train",
        "m",
        "--data",
        data,
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "-o",
        "t",
        cwd=tmp_path,
        check=True,
    )  # installs its own SIGINT/SIGTERM handlers while it runs
    assert colm_in_process("--debug", "eval", tmp_path / "t", "--chains", "9").returncode != 0
    assert state() == before and torch.equal(torch.get_rng_state(), rng)


def test_init_eval_pipeline(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("It is a truth universally acknowledged. " * 40)
    init = colm_in_process("init", "--heads", "2,2", "--layers", "2", cwd=tmp_path, check=True)
    path = init.stdout.strip()
    assert init.stdout.count("\n") == 1 and (tmp_path / path / "config.json").is_file()
    ev = colm_in_process(
        "eval", "--data", data, "--chains", "1,2", "--seq-len", "64", input=init.stdout, cwd=tmp_path, check=True
    )
    report = json.loads(ev.stdout)
    assert [r["chains"] for r in report["results"]] == [1, 2]
    assert report["tokens"] == len(data.read_text()) + 1  # every byte and the EOS, the BOS is context
    for r in report["results"]:
        # A random byte-level model is near uniform over 258 tokens: about 8 bits per byte.
        assert 6.0 < r["bits_per_byte"] < 10.0 and abs(r["ppl"] - 2.718281828 ** r["loss"]) < 1e-6 * r["ppl"]


def test_init_names_outputs_without_clashing_and_inspect_reads_stdin(tmp_path):
    first = colm_in_process("init", cwd=tmp_path, check=True).stdout.strip()
    second = colm_in_process("init", cwd=tmp_path, check=True).stdout.strip()
    assert first != second
    report = json.loads(colm_in_process("inspect", "--json", input=second + "\n", cwd=tmp_path, check=True).stdout)
    assert report["parameters"] == sum(c["parameters"] for c in report["chains"])
    assert report["history"][0]["command"] == "init"


def test_init_air_and_flags(tmp_path):
    proc = colm_in_process(
        "init",
        "-o",
        tmp_path / "m",
        "--air",
        "--heads",
        "4,4",
        "--kv-heads",
        "2",
        "--ffn",
        "32",
        "--layers",
        "1",
        "--head-dim",
        "8",
        "--rope-scaling",
        "8,1,4,64",
        "--tie-embeddings",
        check=True,
    )
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["kv_share"] and cfg["kv_heads"] == [2, 0] and cfg["ffn"] == [32, 32]
    assert cfg["rope_scaling"]["factor"] == 8 and cfg["tie_embeddings"]
    assert proc.stdout.strip() == str(tmp_path / "m")


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    colm_in_process("init", "-o", tmp_path / "m", check=True)
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert_one_line_error(colm_in_process("init", "-o", tmp_path / "m"), 2, "--force")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    assert_one_line_error(
        colm_in_process("init", "-o", tmp_path / "x", "--heads", "3,3", "--kv-heads", "2"),
        2,
        "chain 1: 3 query heads is not a multiple of 2 KV heads",
    )
    assert_one_line_error(
        colm_in_process("init", "-o", tmp_path / "x", "--preset", "huge"), 2, "--preset huge: choose one of tiny"
    )
    assert_one_line_error(colm_in_process("eval", tmp_path / "m", "--chains", "9"), 2, "outside 1..4")
    assert_one_line_error(colm_in_process("eval", tmp_path / "nope"), 2, "no such checkpoint")
    assert_one_line_error(
        colm_in_process("eval", tmp_path / "m", "--data", tmp_path / "missing.txt"), 2, "no such file"
    )
    assert_one_line_error(colm_in_process("eval", tmp_path / "m", "--bogus"), 2, "No such option")
    assert_one_line_error(colm_in_process("inspect", input=""), 2, "stdin was empty")
    assert not (tmp_path / "x").exists()


def test_data_directory_skips_hidden_and_binary_files(tmp_path):
    """--data DIR reads the text files only: not .git/ objects, not hidden files, not binary files."""
    colm_in_process("init", "-o", tmp_path / "m", "--layers", "1", check=True)
    data = tmp_path / "data"
    (data / ".git" / "objects").mkdir(parents=True)
    (data / "sub").mkdir()
    (data / "a.txt").write_text("plain text. " * 10)
    (data / "sub" / "b.md").write_text("more text")
    (data / ".git" / "objects" / "ab12").write_bytes(b"x\x9c\xcbH\xcd\xc9\xc9\x07\x00")
    (data / ".notes").write_text("hidden")
    (data / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    proc = colm_in_process("eval", tmp_path / "m", "--data", data, "--seq-len", "32", check=True)
    # a.txt and b.md only: every byte plus one EOS per document is a target, less the very first BOS
    assert json.loads(proc.stdout)["tokens"] == len("plain text. " * 10) + len("more text") + 2 + 1
    assert "skipped 1 file(s)" in proc.stderr and "image.png" in proc.stderr
    (data / "a.txt").unlink()
    (data / "sub" / "b.md").unlink()
    assert_one_line_error(colm_in_process("eval", tmp_path / "m", "--data", data), 2, "no text files found")


def test_eval_without_data_scores_the_held_out_part_of_the_default_corpus(tmp_path):
    """Training without --data holds out the corpus's last 5%; eval without --data scores that part, not the start."""
    from colm_core.checkpoint import load
    from colm_core.data import default_corpus_files
    from colm_core.evaluate import evaluate_tokens, token_stream

    colm_in_process("init", "-o", tmp_path / "m", "--layers", "1", "--heads", "2", check=True)
    proc = colm_in_process(
        "eval",
        tmp_path / "m",
        "--max-tokens",
        "64",
        "--seq-len",
        "64",
        env={"COLM_CACHE_DIR": str(tmp_path / "cache")},
        check=True,
    )
    assert "held-out part of the embedded corpus" in proc.stderr
    model = load(tmp_path / "m")
    stream = token_stream(model.tokenizer, [p.read_text() for p in default_corpus_files()])
    held_out = stream[len(stream) - int(len(stream) * 0.05) :]
    loss = json.loads(proc.stdout)["results"][0]["loss"]
    assert loss == evaluate_tokens(model, held_out[:65], [1], seq_len=64)["results"][0]["loss"]
    assert loss != evaluate_tokens(model, stream[:65], [1], seq_len=64)["results"][0]["loss"]


def tree(root) -> dict:
    """Every file below root with its bytes: what a refused command must leave as it was."""
    from pathlib import Path

    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_an_output_that_holds_an_input_is_refused_before_anything_is_touched(tmp_path):
    """Whatever the input (checkpoint, --data, --config, a GGUF file) and whichever way round (output
    inside an input, or an input inside the output or OUT.partial that --force would replace)."""
    from colm_core.checkpoint import save
    from tests.conftest import tiny_model

    run = tmp_path / "run"
    save(tiny_model(), run / "steps" / "step-2" / "model", history=[])
    save(tiny_model(), tmp_path / "base", history=[])
    (run / "config.json").write_text("{}")  # a checkpoint, as far as --force is concerned
    (run / "data.txt").write_text("some text " * 200)
    (run / "train.json").write_text('{"steps": 1}')
    (tmp_path / "out.partial").mkdir()
    save(tiny_model(), tmp_path / "out.partial" / "m", history=[])
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    inner = str(run / "steps" / "step-2" / "model")
    train = ["train", "--steps", "1", "--seq-len", "16", "--batch-size", "1"]
    cases = [
        (["slice", inner, "--chains", "1", "-o", run, "--force"], "contains the input"),
        (["expand", inner, "-o", run, "--force"], "contains the input"),
        (["export", inner, "--format", "hf", "-o", run, "--force"], "contains the input"),
        (["slice", tmp_path / "base", "--chains", "1", "-o", tmp_path / "base", "--force"], "inside the input"),
        ([*train, tmp_path / "base", "--data", run / "data.txt", "-o", run, "--force"], "contains the input"),
        ([*train, tmp_path / "base", "--data", str(run / "*.txt"), "-o", run, "--force"], "contains the input"),
        ([*train, tmp_path / "base", "--config", run / "train.json", "-o", run, "--force"], "contains the input"),
        ([*train, tmp_path / "out.partial" / "m", "-o", tmp_path / "out", "--force"], "out.partial contains"),
        (["import", tmp_path / "m.gguf", "-o", tmp_path, "--force"], "contains the input"),
    ]
    before = tree(tmp_path)
    for args, message in cases:
        assert_one_line_error(colm_in_process(*args, cwd=tmp_path), 2, message)
        assert tree(tmp_path) == before, args
