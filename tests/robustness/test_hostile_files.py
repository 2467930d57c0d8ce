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
from tests.conftest import assert_one_line_error, run_cli, tiny_model
from tests.robustness.hostile import MUTATIONS, check_directory, make_case

CASES = 150


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


@pytest.mark.parametrize("mutation, expected", [
    ("fifo_config", "has no config.json"),  # a FIFO is not read: it would block
    ("index_escapes", "outside the directory"),
    ("deep_history", "colm_history.json: not valid JSON (RecursionError"),
])
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
    assert_one_line_error(run_cli("inspect", case), contains=expected)


def test_training_a_model_whose_vocabulary_its_tokenizer_exceeds_is_refused(good, tmp_path):
    (tmp_path / "a.txt").write_text("text " * 500)  # bytes up to 256 (BOS), beyond the 97-token vocabulary
    proc = run_cli("train", good, "--data", tmp_path / "a.txt", "--steps", "1", "--batch-size", "1",
                   "--seq-len", "8", "-o", tmp_path / "out", env={"COLM_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(proc, contains="the tokenizer gives token id 256, but the model's vocabulary has 97")
