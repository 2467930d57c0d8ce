"""Two real torchrun processes (gloo, CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from colm_core.checkpoint import history_entry, load, open_checkpoint, save
from colm_core.init import InitOptions, init_model
from tests.conftest import REPO, assert_one_line_error, colm_in_process, colm_in_subprocess

ARGS = [
    "--steps",
    "4",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--lr",
    "1e-2",
    "--warmup-steps",
    "1",
    "--log-every",
    "1",
    "--eval-windows",
    "4",
    "--save-every",
    "2",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = init_model(InitOptions(heads=[2, 2], n_layers=2, head_dim=8, ffn=[32], max_seq_len=64))
    save(model, root / "base", history=[history_entry("init", {})])
    (root / "text.txt").write_text(open(os.__file__).read())  # real text: os.py
    env = {"COLM_CACHE_DIR": str(root / "cache")}
    single = colm_in_process(
        "train", root / "base", "--data", root / "text.txt", *ARGS, "-o", root / "single", env=env, check=True
    )
    assert single.stdout.strip() == str(root / "single")
    return root, env


def last_record(path, key):
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r][-1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(setup, strategy):
    root, env = setup
    out = root / strategy
    train_args = ["train", root / "base", "--data", root / "text.txt", *ARGS, "--strategy", strategy, "-o", out]
    if strategy == "ddp":  # torchrun itself, as a cluster job would start it
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "colm_cli",
            *map(str, train_args),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **env}
        )
    else:  # the --nproc convenience, which launches torchrun
        proc = colm_in_subprocess(*train_args, "--nproc", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out)], proc.stderr  # rank 0 alone prints the path

    single = root / "single"
    for key in ("loss", "val_loss"):
        ours, ref = last_record(out, key), last_record(single, key)
        assert ours.keys() == ref.keys() == {"1", "2"}
        for k in ref:
            assert abs(ours[k] - ref[k]) < 1e-5, (key, k, ours, ref)
    # The output and its step checkpoints are ordinary single-directory checkpoints.
    trained, reference = load(out), load(single)
    for (name, a), (_, b) in zip(trained.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert open_checkpoint(out / "steps" / "step-0000002" / "model").history[-1]["args"]["processes"] == 2
    assert open_checkpoint(out).history[-1]["eval"]["val_loss"] == last_record(out, "val_loss")


def test_block_diagonal_under_ddp_matches_one_process(setup):
    """The gradient masks of --block-diagonal act before DDP averages: two processes train as one does,
    the lateral blocks stay zero; FSDP (which replaces the parameters) is refused before anything starts."""
    root, env = setup
    args = ["train", root / "base", "--data", root / "text.txt", *ARGS, "--block-diagonal", "1"]
    colm_in_process(*args, "-o", root / "apart-single", env=env, check=True)
    proc = colm_in_subprocess(*args, "--nproc", "2", "-o", root / "apart-ddp", env=env)
    assert proc.returncode == 0, proc.stderr
    two, one = load(root / "apart-ddp"), load(root / "apart-single")
    for (name, a), (_, b) in zip(two.state_dict().items(), one.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    lateral = two.layers[0].attn.q.weights[1][:, : two.layers[0].attn.q.weights[0].shape[1]]
    assert lateral.numel() and not lateral.any()
    fsdp = colm_in_subprocess(*args, "--nproc", "2", "--strategy", "fsdp", "-o", root / "apart-fsdp", env=env)
    assert_one_line_error(fsdp, 2, "--block-diagonal works with --strategy ddp")
    assert not (root / "apart-fsdp").exists()
