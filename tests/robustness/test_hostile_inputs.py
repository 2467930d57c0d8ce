"""Hostile inputs other than checkpoint directories (tests/robustness/inputs.py) end in exit 0 or one clean
error line, exit 2; a file that contradicts itself or an output that overlaps an input never exits 0, and the
overlap leaves every input as it was. `python3 -m tests.robustness.campaign --gguf N --tasks N --prompts N
--overlap N` runs many."""

from __future__ import annotations

import pytest

from tests.robustness.inputs import run_family

CASES = {"gguf": 30, "prompts": 12, "overlap": 12, "tasks": 3}  # a few seconds each


@pytest.mark.parametrize("family", sorted(CASES))
def test_hostile_inputs_end_cleanly(tmp_path, family):
    if family == "tasks":
        pytest.importorskip("lm_eval")
    result = run_family(family, CASES[family], seed=0, root=tmp_path)
    assert result["failures"] == [], result["failures"]
    assert result["outcomes"].get("refused", 0) > 0, result  # the cases do damage
