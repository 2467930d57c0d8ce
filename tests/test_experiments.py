"""The experiments in benchmarks/experiments run end to end in their --quick mode, as a user runs them
(`python -m benchmarks.experiments.NAME`, in a subprocess), on a small corpus written here; their
JSON holds what docs/results.md reports and their plot is a PNG. A rerun reuses finished arms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, child_environment

PNG_MAGIC = b"\x89PNG"


def run_experiment(name: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = child_environment({"COLM_CACHE_DIR": str(tmp_path / "cache"), "MPLBACKEND": "Agg"})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"benchmarks.experiments.{name}",
            "--quick",
            *args,
            "--out",
            str(tmp_path / f"{name}.json"),
            "--plot",
            str(tmp_path / f"{name}.png"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two 'books' of English-like text: one to train on, one held out."""
    root = tmp_path_factory.mktemp("corpus")
    words = "the of and to a in that was her it his she he had for with you not be as at".split()
    for name, seed in (("train.txt", 1), ("val.txt", 2)):
        text = " ".join(words[(i * seed * 7 + i // 3) % len(words)] for i in range(12000))
        (root / name).write_text(text)
    return root


def trained(name: str, tmp_path, corpus, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run_experiment(
        name,
        tmp_path,
        "--train",
        str(corpus / "train.txt"),
        "--val",
        str(corpus / "val.txt"),
        "--workdir",
        str(tmp_path / "work"),
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == PNG_MAGIC
    return proc, json.loads((tmp_path / f"{name}.json").read_text())


def test_quality_matches_parameters_and_resumes(tmp_path, corpus):
    _, result = trained("quality", tmp_path, corpus)
    runs = {name: r[0] for name, r in result["runs"].items()}
    assert set(runs) == {"dense", "colm-2", "colm-4", "air-4"}
    dense = runs["dense"]["non_embedding_parameters"]
    for r in runs.values():  # matched within one FFN unit per chain and layer
        assert abs(r["non_embedding_parameters"] - dense) / dense < 0.01
        assert 0 < r["bits_per_byte"] < 9 and r["tokens"] == runs["dense"]["tokens"]
        assert [p["step"] for p in r["curve"]] == sorted(p["step"] for p in r["curve"]) and len(r["curve"]) >= 2

    again, rerun = trained("quality", tmp_path, corpus)  # every arm is read back, nothing retrained
    assert again.stderr.count("done before") == 4
    assert rerun["summary"] == result["summary"]

    changed = run_experiment(
        "quality",
        tmp_path,
        "--train",
        str(corpus / "train.txt"),
        "--val",
        str(corpus / "val.txt"),
        "--workdir",
        str(tmp_path / "work"),
        "--steps",
        "7",
    )
    assert changed.returncode == 2 and "holds a run with other settings" in changed.stderr
    assert "--steps 6 -> 7" in changed.stderr

    # another seed shares the work directory (seeds are not a setting); all seeds together read both back
    trained("quality", tmp_path, corpus, "--seeds", "1")
    both, result = trained("quality", tmp_path, corpus, "--seeds", "0,1")
    assert both.stderr.count("done before") == 8
    for name, runs in result["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1] and runs[0] == rerun["runs"][name][0]
        values = [r["bits_per_byte"] for r in runs]
        assert result["summary"][name]["bits_per_byte_max"] - result["summary"][name][
            "bits_per_byte_min"
        ] == pytest.approx(max(values) - min(values))
    repeated = run_experiment("quality", tmp_path, "--seeds", "0,0")
    assert repeated.returncode == 2 and "distinct" in repeated.stderr


def test_elastic_reports_every_scale(tmp_path, corpus):
    _, result = trained("elastic", tmp_path, corpus)
    scales = result["scales"]
    assert [s["chains"] for s in scales] == [1, 2]
    assert scales[0]["non_embedding_parameters"] < scales[1]["non_embedding_parameters"]
    assert scales[0]["forward_flops_per_token"] < scales[1]["forward_flops_per_token"]
    # the separately trained full-size model is the `full` arm itself
    assert scales[-1]["separate"] == scales[-1]["full"]
    assert all(0 < s[key] < 9 for s in scales for key in ("full", "all", "separate"))


def test_progressive_counts_compute_and_preserves_function(tmp_path, corpus):
    _, result = trained("progressive", tmp_path, corpus, "--seeds", "0,1")
    arms, summary = result["arms"], result["summary"]
    assert all(len(runs) == 2 for runs in arms.values())
    assert max(r["widening_max_logit_error"] for r in arms["net2net"]) < 1e-4
    base_flops = summary["base"]["flops"]
    for name in ("grown-frozen", "grown-unfrozen", "block-diagonal-frozen", "block-diagonal-unfrozen", "net2net"):
        assert summary[name]["flops"] > base_flops  # the base model's training is counted
    # a frozen chain 1 is not trained: its sub-model keeps the base model's held-out bits/byte exactly
    for name in ("grown-frozen", "block-diagonal-frozen"):
        for grown, base in zip(arms[name], arms["base"]):
            assert grown["curve"][-1]["bits_per_byte"]["1"] == pytest.approx(
                base["curve"][-1]["top_bits_per_byte"], abs=1e-6
            )
    trainable = {name: runs[0]["trainable_parameters"] for name, runs in arms.items()}
    assert trainable["block-diagonal-frozen"] < trainable["grown-frozen"] < trainable["grown-unfrozen"]
    assert trainable["block-diagonal-unfrozen"] < trainable["grown-unfrozen"]
    assert arms["grown-frozen"][0]["step_flops"] < arms["grown-unfrozen"][0]["step_flops"]
    # the seeds are different runs: a spread, and the mean is of both
    bpb = [r["curve"][-1]["top_bits_per_byte"] for r in arms["scratch"]]
    assert bpb[0] != bpb[1] and summary["scratch"]["spread"] == pytest.approx(abs(bpb[0] - bpb[1]))


def test_air_speed_prefill_gives_the_same_first_token(tmp_path):
    proc = run_experiment("air_speed", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "air_speed.png").read_bytes()[:4] == PNG_MAGIC
    points = json.loads((tmp_path / "air_speed.json").read_text())["points"]
    assert [p["prompt_tokens"] for p in points] == [16, 32]
    for p in points:
        assert p["same_first_token"]
        assert not p["air switch recomputed"] and p["colm switch recomputed"]
