"""Hostile checkpoint directories (tests/robustness/hostile.py) end in a clean error or a working
model: never another exception, a hang or a memory blow-up. In process, so that hundreds of cases
cost seconds; the CLI's side (a ColmError becomes one line) is proven on a few of them below.
`python3 -m tests.robustness.campaign --files N` runs thousands."""

from __future__ import annotations

import collections
import os
import random
import shutil

import pytest

from colm_core.checkpoint import save
from tests.conftest import tiny_model
from tests.robustness.cli_fuzz import run_main
from tests.robustness.hostile import MUTATIONS, check_directory, make_case

CASES = 500


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "ckpt"
    save(tiny_model(), path)
    return path


def test_every_hostile_directory_ends_cleanly(good, tmp_path):
    outcomes = collections.Counter()
    for seed in range(CASES):
        case, what = make_case(good, tmp_path / "case", seed)
        try:
            outcomes[check_directory(case)] += 1
        except BaseException as e:
            raise AssertionError(f"seed {seed} ({what}): {type(e).__name__}: {e}") from e
    assert outcomes["clean"] > CASES // 2, outcomes  # the mutations do damage


def test_each_mutation_alone_ends_cleanly(good, tmp_path):
    for i, mutation in enumerate(MUTATIONS):
        case = tmp_path / f"case{i}"
        shutil.copytree(good, case)
        what = mutation(case, random.Random(i))
        assert check_directory(case) in ("ok", "clean"), what


@pytest.mark.parametrize(
    "mutation, expected",
    [
        ("fifo_config", "has no config.json"),  # a FIFO is not read: it would block
        ("index_escapes", "outside the directory"),
        ("deep_history", "colm_history.json: not valid JSON (RecursionError"),
    ],
)
def test_the_cli_prints_one_line_for_hostile_directories(good, tmp_path, mutation, expected):
    case = tmp_path / "case"
    shutil.copytree(good, case)
    if mutation == "fifo_config":
        (case / "config.json").unlink()
        os.mkfifo(case / "config.json")
    elif mutation == "index_escapes":
        (case / "model.safetensors.index.json").write_text('{"weight_map": {"embed.weight": "../model.safetensors"}}')
    else:
        (case / "colm_history.json").write_text("[" * 100_000)
    code, stdout, stderr = run_main(["inspect", str(case)])  # the real entry point, in this process
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith("colm: error: ") and expected in stderr, stderr


def test_training_a_model_whose_vocabulary_its_tokenizer_exceeds_is_refused(good, tmp_path, monkeypatch):
    monkeypatch.setenv("COLM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.txt").write_text("text " * 500)  # ids up to 257 (EOS), beyond the 97-token vocabulary
    code, stdout, stderr = run_main(
        [
            "train",
            str(good),
            "--data",
            str(tmp_path / "a.txt"),
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--seq-len",
            "8",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "the tokenizer gives token id 257, but the model's vocabulary has 97" in stderr, stderr
