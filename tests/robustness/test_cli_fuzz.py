"""Hypothesis-drawn command lines over every command end in exit 0 or one clean error line
(tests/robustness/cli_fuzz.py). `python3 -m tests.robustness.campaign --cli N` draws N."""

from __future__ import annotations

import shutil

from hypothesis import HealthCheck, given, settings

from colm_core.checkpoint import save
from tests.conftest import tiny_model
from tests.robustness.cli_fuzz import check_outcome, command_lines, run_main

CASES = 40


def test_hostile_command_lines_end_cleanly(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("cli")
    save(tiny_model(vocab_size=258), root / "ckpt")
    (root / "data.txt").write_text("Emma Woodhouse, handsome, clever, and rich. " * 100)
    for name, value in {
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "COLM_CACHE_DIR": str(root / "cache"),
        "COLM_DEBUG": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(root)
    out = root / "out"

    @settings(
        max_examples=CASES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(command_lines(root / "ckpt", root / "data.txt", out))
    def one(args):
        for leftover in (out, out.with_name("out.partial")):
            shutil.rmtree(leftover, ignore_errors=True)
        check_outcome(args, *run_main(args))

    one()
