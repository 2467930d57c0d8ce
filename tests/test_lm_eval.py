"""lm-evaluation-harness on colm checkpoints: the `colm` model scores as lm-eval's own `hf` model does, and
`colm eval --tasks` gives one row per chain count, each the row of the model sliced to that many chains.

The tasks are tests/lm_eval_tasks (JSON lines and YAML, one per output type), read offline."""

from __future__ import annotations

import json
import os

import pytest

from colm_core.checkpoint import save
from colm_core.export import export
from colm_core.surgery import slice_
from tests.conftest import REPO, TASKS_DIR, assert_one_line_error, colm_in_process, colm_in_subprocess, tiny_model

TASKS = ["colm_tiny_prose", "colm_tiny_choice", "colm_tiny_answer"]  # rolling, multiple choice, generation
BYTE_VOCAB = dict(vocab_size=258, bos_token_id=256, eos_token_id=257)  # the byte tokenizer's ids


def responses(out: dict, task: str) -> list:
    """Each document's model responses, in document order: (log-likelihood, is greedy) per choice, the
    rolling log-likelihood, or the generated text."""
    return [sample["resps"] for sample in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


def test_colm_model_scores_every_request_as_lm_evals_hf_model(tmp_path, offline):
    """A 1-chain CoLM through lm-eval's registered `colm` model and its hf-llama export through lm-eval's `hf`
    model: every request of all three output types within 1e-4 in log-likelihood, the same greedy flags and
    the same generated text. One few-shot example makes some contexts longer than the model's context of 64
    tokens (left truncation); 3 requests per batch pad rows of different lengths."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from colm_core.lm_eval_adapter import task_manager

    save(tiny_model(heads=[2], kv_heads=[1], ffn=[24], **BYTE_VOCAB), tmp_path / "colm")
    export(tmp_path / "colm", tmp_path / "hf", fmt="hf-llama", verify=False)
    manager = task_manager(TASKS, TASKS_DIR)
    common = dict(tasks=TASKS, num_fewshot=1, task_manager=manager, log_samples=True, bootstrap_iters=0)
    ours = lm_eval.simple_evaluate(
        model="colm", model_args=f"pretrained={tmp_path / 'colm'},chains=1,batch_size=3", **common
    )
    reference = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(tmp_path / "hf"), device="cpu", dtype="float32", batch_size=3), **common
    )

    prose, reference_prose = responses(ours, "colm_tiny_prose"), responses(reference, "colm_tiny_prose")
    assert len(prose) == 4 and any(len(json.loads(line)["text"]) > 64 for line in open("colm_tiny_prose.jsonl"))
    for (ll,), (ref,) in zip(prose, reference_prose):
        assert ll[0] == pytest.approx(ref[0], abs=1e-4)
    choices, reference_choices = responses(ours, "colm_tiny_choice"), responses(reference, "colm_tiny_choice")
    assert len(choices) == 4
    for doc, reference_doc in zip(choices, reference_choices):
        assert len(doc) == len(reference_doc) == 4
        for ((ll, greedy),), ((ref_ll, ref_greedy),) in zip(doc, reference_doc):
            assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    texts, reference_texts = responses(ours, "colm_tiny_answer"), responses(reference, "colm_tiny_answer")
    assert len(texts) == 4 and texts == reference_texts
    assert all(0 < len(text) for (text,) in texts)  # something was generated, so equal text means something
    assert ours["config"]["chains"] == 1


def test_every_chain_count_is_a_row_equal_to_the_sliced_model(tmp_path, offline):
    """The real CLI on a 2-chain model: a table with a column per chain count on stderr, lm-eval's results per
    chain count as JSON on stdout; the 1-chain results equal those of `colm slice --chains 1` of the model."""
    from colm_core.lm_eval_adapter import evaluate_tasks

    save(tiny_model(heads=[2, 2], kv_heads=[1, 1], ffn=[24, 16], **BYTE_VOCAB), tmp_path / "colm")
    flags = ["--tasks", ",".join(TASKS), "--include-path", TASKS_DIR, "--num-fewshot", "1", "--limit", "3"]
    proc = colm_in_process(
        "eval",
        tmp_path / "colm",
        *flags,
        "--chains",
        "2,1",
        "--batch-size",
        "2",
        cwd=TASKS_DIR,
        env=offline,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["chains"] == [1, 2] and set(report["results"]) == {"1", "2"}
    assert "1 chains" in proc.stderr and "2 chains" in proc.stderr and "bits_per_byte" in proc.stderr
    rows = {k: out["results"] for k, out in report["results"].items()}
    for k in ("1", "2"):
        assert set(rows[k]) == set(TASKS) and all(r["sample_len"] == 3 for r in rows[k].values())
    assert rows["1"]["colm_tiny_prose"] != rows["2"]["colm_tiny_prose"]  # two different models

    slice_(tmp_path / "colm", tmp_path / "slice1", chains=1, verify=False)
    sliced = evaluate_tasks(tmp_path / "slice1", TASKS, num_fewshot=1, limit=3, include_path=TASKS_DIR, batch_size=2)
    assert sliced["chains"] == [1]
    for task in TASKS:
        for metric, value in sliced["results"]["1"]["results"][task].items():
            expected = rows["1"][task][metric]
            assert value == (pytest.approx(expected, rel=1e-6) if isinstance(value, float) else expected), metric


def test_tasks_without_lm_eval_installed_is_one_line_naming_the_extra(tmp_path):
    """A meta-path finder hides lm_eval from the child, as if the extra were not installed."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class HideLmEval:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'lm_eval':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n\n\n"
        "sys.meta_path.insert(0, HideLmEval())\n"
    )
    proc = colm_in_subprocess(
        "eval",
        tmp_path / "colm",
        "--tasks",
        "hellaswag",
        env={"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])},
    )
    assert_one_line_error(proc, 2, "pip install 'colm[eval]'")


def test_task_flags_are_checked_before_anything_loads(tmp_path):
    for args, message in [
        (["--limit", "3"], "--limit applies to lm-eval tasks; give --tasks too"),
        (["--tasks", "x", "--data", "a.txt"], "--data applies to text evaluation, not to --tasks"),
        (["--tasks", " , "], "--tasks ' , ': give lm-eval task names"),
        (["--tasks", "x", "--limit", "0"], "--limit 0: must be >= 1"),
    ]:
        assert_one_line_error(colm_in_process("eval", tmp_path / "colm", *args), 2, message)


def test_bad_task_directories_and_flags_are_one_line_exit_2(tmp_path, offline):
    """Each task error names the task or file: a YAML that does not parse, a local group that includes a
    task lm-eval's own index holds (but offline cannot read), more few-shot examples than the task has, a bad
    output_type, a template that does not parse, --seq-len (which the tasks do not use)."""
    import shutil

    save(tiny_model(heads=[2, 2], kv_heads=[1, 1], ffn=[24, 16], **BYTE_VOCAB), tmp_path / "colm")
    choice = (TASKS_DIR / "colm_tiny_choice.yaml").read_text()
    cases = {
        "unparsable": (
            {"broken.yaml": "task: broken\n  x: [\n"},
            "broken",
            [],
            "broken.yaml is not a valid task file (ScannerError",
        ),
        "group": (
            {"g.yaml": "group: mine\ntask:\n  - colm_tiny_choice\n  - hellaswag\n"},
            "mine",
            [],
            "lm-eval task 'mine' cannot be loaded (ConnectionError",
        ),
        "fewshot": (
            {},
            "colm_tiny_choice",
            ["--num-fewshot", "4"],
            "4 few-shot examples: task 'colm_tiny_choice' has 4 to draw from (the document evaluated is left "
            "out); give --num-fewshot 3 or less",
        ),
        "output_type": (
            {"t.yaml": choice.replace("task: colm_tiny_choice", "task: t").replace("multiple_choice", "choose")},
            "t",
            [],
            "invalid output_type 'choose'",
        ),
        "template": (
            {"t.yaml": choice.replace("task: colm_tiny_choice", "task: t").replace("{{question}}", "{{ question")},
            "t",
            [],
            "(TemplateSyntaxError",
        ),
        "seq_len": ({}, "colm_tiny_choice", ["--seq-len", "64"], "--seq-len applies to text evaluation"),
    }
    # First a good run, which also builds the datasets cache: later runs print no progress bar before their error.
    good = tmp_path / "good"
    good.mkdir()
    for source in ("colm_tiny_choice.yaml", "colm_tiny_choice.jsonl"):
        shutil.copy(TASKS_DIR / source, good)
    colm_in_process(
        "eval",
        tmp_path / "colm",
        "--tasks",
        "colm_tiny_choice",
        "--include-path",
        good,
        "--num-fewshot",
        "3",
        "--limit",
        "2",
        cwd=good,
        env=offline,
        check=True,
    )
    for name, (files, task, flags, message) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        shutil.copy(TASKS_DIR / "colm_tiny_choice.yaml", directory)
        for file, text in files.items():
            (directory / file).write_text(text)
        proc = colm_in_process(
            "eval",
            tmp_path / "colm",
            "--tasks",
            task,
            "--include-path",
            directory,
            "--limit",
            "2",
            *flags,
            cwd=good,
            env=offline,
        )  # data_files are read from the working directory
        assert_one_line_error(proc, 2, message)
