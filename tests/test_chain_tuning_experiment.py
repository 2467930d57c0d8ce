"""benchmarks/experiments/chain_tuning.py --quick: the whole experiment end to end, at a tiny size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def books(root: Path) -> Path:
    """The books the experiment reads, as English-like text written here (the test needs no corpus)."""
    from benchmarks.experiments.chain_tuning import AUSTEN, SETTINGS

    root.mkdir()
    words = "the of and to a in that was her it his she he had for with you not be as at".split()
    for seed, name in enumerate([*AUSTEN, SETTINGS["quick"].target, SETTINGS["quick"].other], start=1):
        lines = (" ".join(words[(i * seed * 7 + j) % len(words)] for j in range(12)) for i in range(1500))
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_quick_chain_tuning_compares_three_arms_and_keeps_the_base_inside(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.experiments.chain_tuning",
        "--quick",
        "--work",
        str(tmp_path / "work"),
        "--results",
        str(tmp_path),
        "--data",
        str(books(tmp_path / "books")),
    ]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    payload = json.loads((tmp_path / "chain_tuning-quick.json").read_text())
    assert (tmp_path / "chain_tuning-quick.png").stat().st_size > 0
    r = payload["results"]
    assert payload["slice_check"]["chain1_tensors_equal_base"]
    assert r["chain"]["target"]["1"] == r["base"]["target"]["1"]  # the frozen chain is the base: no forgetting
    assert r["chain"]["other"]["1"] == r["base"]["other"]["1"]
    assert r["chain"]["target"]["2"] < r["base"]["target"]["1"]  # the new chain learned the target text
    assert r["full"]["target"]["1"] != r["base"]["target"]["1"] and r["lora"]["target"]["1"] != r["base"]["target"]["1"]
    n = payload["trainable_parameters"]
    assert 0.8 < n["lora"] / n["chain"] < 1.25  # LoRA's rank is matched to the new chain's size
    assert set(payload["training"]) == {"chain", "full", "lora"}
    for fmt in ("hf", "hf-llama"):
        assert Path(payload["exports"][fmt]["path"], "config.json").is_file()
    # a rerun resumes: every stage is done, so nothing is trained again and the numbers are the same; LoRA,
    # whose merged model is removed, continues from its saved state (safetensors) at the last step
    assert (tmp_path / "work" / "lora-state.safetensors").is_file()
    for stage in ("lora", "lora-merged"):
        shutil.rmtree(tmp_path / "work" / stage)
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    assert (tmp_path / "work" / "lora").is_dir()
    assert json.loads((tmp_path / "chain_tuning-quick.json").read_text())["results"] == r
