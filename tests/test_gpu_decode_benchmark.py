"""benchmarks/gpu_decode.py --quick: every row of both tables, with finite numbers, in its JSON."""

import json
import math
import sys

from benchmarks import gpu_decode
from colm_core import generation


def test_gpu_decode_quick_writes_every_row_with_finite_numbers(tmp_path, monkeypatch):
    out = tmp_path / "gpu_decode.json"
    monkeypatch.setattr(generation, "COMPILED_STEPS", {})  # the benchmark's CPU stand-in for inductor stays here
    monkeypatch.setattr(sys, "argv", ["gpu_decode", "--quick", "--device", "cpu", "--out", str(out)])
    gpu_decode.main()
    payload = json.loads(out.read_text())
    decode = {(r["case"], r["batch"]) for r in payload["rows"] if r["table"] == "decode"}
    cases = ["transformers generate"] + [
        f"colm {k}, {how}" for k in ("4 chains", "1 chain") for how in ("eager", "graphed")
    ]
    assert decode == {(case, batch) for case in cases for batch in gpu_decode.QUICK["batches"]}
    prefill = {(r["prompt_tokens"], r["chains"]) for r in payload["rows"] if r["table"] == "air prefill"}
    assert prefill == {(n, k) for n in gpu_decode.QUICK["prefill"] for k in (1, 4)}
    for row in payload["rows"]:
        numbers = [v for k, v in row.items() if isinstance(v, float)]
        assert len(numbers) >= 3 and all(math.isfinite(v) and v > 0 for v in numbers), row
    assert len(payload["ratios"]) == 5 and all(math.isfinite(v) and v > 0 for v in payload["ratios"].values())
