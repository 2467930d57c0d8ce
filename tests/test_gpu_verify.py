"""benchmarks/gpu_verify.py --quick on the CPU: every table of the GPU plan, with finite numbers."""

import json
import math
import subprocess
import sys

from tests.conftest import REPO, child_environment


def test_quick_run_writes_every_table_with_finite_numbers(tmp_path):
    from benchmarks.gpu_verify import TABLES

    out = tmp_path / "gpu_verify.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_verify", "--quick", "--threads", "1", "--out", out],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=child_environment(None),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] and report["device"] == "cpu"
    assert set(report["tables"]) == set(TABLES)
    for name, table in report["tables"].items():
        assert table["rows"], name
        for row in table["rows"]:
            numbers = [v for v in row.values() if isinstance(v, (int, float))]
            assert numbers and all(math.isfinite(v) for v in numbers), (name, row)
    backends = {r["backend"] for r in report["tables"]["T1"]["rows"]}
    assert backends == {"dense", "masked", "torch"}  # Triton only on CUDA
    losses = {r["loss"] for r in report["tables"]["T3"]["rows"]}
    assert losses == {"materialised fp32 logits", "checkpointed (before)", "fused"}
    # in float32 on the CPU, the fused loss is the materialised one to rounding
    assert all(r["loss_rel_diff"] < 1e-5 and r["head_grad_rel_diff"] < 1e-4 for r in report["tables"]["T3"]["rows"])
