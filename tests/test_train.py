"""`colm train`: falling loss, exact resume, chain tuning, the multi-scale loss, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from colm_core import losses
from colm_core.checkpoint import history_entry, load, open_checkpoint, save, weights_digest
from colm_core.data import default_corpus_files, token_cache
from colm_core.init import InitOptions, init_model
from colm_core.losses import MultiScaleLoss
from colm_core.model import CoLM, chain_of
from colm_core.tokenizer import ByteTokenizer
from tests.conftest import REPO, assert_one_line_error, colm_in_process, tiny_config, tiny_model

FAST = ["--batch-size", "4", "--seq-len", "32", "--log-every", "1", "--eval-windows", "4"]


@pytest.fixture
def env(tmp_path):
    return {"COLM_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def corpus(tmp_path):
    """A small real corpus: Python standard-library sources (about 150 KB), plus one held-out file."""
    files = default_corpus_files(160_000)
    train_dir = tmp_path / "corpus"
    train_dir.mkdir()
    for f in files[:-1]:
        shutil.copy(f, train_dir / f.name)
    return train_dir, files[-1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A fresh 2-chain byte-level checkpoint (what `colm init` writes), shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("init") / "base"
    model = init_model(InitOptions(heads=[2, 2], n_layers=2, head_dim=8, ffn=[32], max_seq_len=64))
    save(model, path, history=[history_entry("init", {})])
    return str(path)


def weights(path) -> dict[str, torch.Tensor]:
    return dict(open_checkpoint(path).tensors())


def eval_losses(path, data, env) -> dict[int, float]:
    proc = colm_in_process("eval", path, "--data", data, "--seq-len", "64", "--max-tokens", "4000", env=env, check=True)
    return {r["chains"]: r["loss"] for r in json.loads(proc.stdout)["results"]}


def test_loss_falls_on_a_small_real_corpus(tmp_path, env, corpus, base):
    train_dir, held_out = corpus
    before = eval_losses(base, held_out, env)
    proc = colm_in_process(
        "train",
        base,
        "--data",
        train_dir,
        "--steps",
        "30",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "5",
        "--eval-every",
        "15",
        "-o",
        tmp_path / "trained",
        env=env,
        check=True,
    )
    out = proc.stdout.strip()
    assert proc.stdout.count("\n") == 1 and out == str(tmp_path / "trained")
    after = eval_losses(out, held_out, env)
    for k in (1, 2):  # every sub-model learned, not only the full one
        assert after[k] < before[k] - 1.0, (k, before, after)
    records = [json.loads(line) for line in (tmp_path / "trained" / "metrics.jsonl").read_text().splitlines()]
    train_loss = [r["loss"] for r in records if "loss" in r]
    assert len(train_loss) == 30 // 10 and set(train_loss[0]) == {"1", "2"}
    assert [r["step"] for r in records if "val_loss" in r] == [15, 30]
    entry = open_checkpoint(out).history[-1]
    assert entry["command"] == "train" and entry["args"]["steps"] == 30
    assert entry["args"]["kernels"] == "torch"  # the default backend, as COLM_KERNELS is unset
    assert entry["eval"]["val_loss"] == records[-1]["val_loss"]
    assert not (tmp_path / "trained.partial").exists()
    assert entry["inputs"][0]["sha256"] == weights_digest(open_checkpoint(base))  # the input is untouched


def test_bad_kernel_backend_is_refused(tmp_path, env, base, monkeypatch):
    """A COLM_KERNELS that cannot run is bad input (the backend used is recorded: see the test above)."""
    args = ["train", base, "--steps", "1", *FAST, "-o", tmp_path / "out"]
    proc = colm_in_process(*args, env={**env, "COLM_KERNELS": "cublas"})
    assert_one_line_error(proc, contains="COLM_KERNELS='cublas' is not a kernel backend")
    # The kernel tests' TRITON_INTERPRET=1 must not reach the CLI: it would run Triton interpreted
    # on CPU (and, on a GPU machine, CUDA tensors through the interpreter).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    proc = colm_in_process(*args, env={**env, "COLM_KERNELS": "triton"})
    assert_one_line_error(proc, contains="COLM_KERNELS=triton runs on CUDA only")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_resume_auto_continues_bitwise(tmp_path, env, corpus, base):
    """N steps straight vs N/2, a kill, and --resume auto: the same weights, bit for bit."""
    train_dir, _ = corpus
    args = ["train", base, "--data", train_dir, "--steps", "8", *FAST, "--save-every", "2", "--keep-checkpoints", "10"]
    straight = tmp_path / "straight"
    colm_in_process(*args, "-o", straight, env=env, check=True)
    steps = sorted(p.name for p in (straight / "steps").iterdir())
    assert steps == ["step-0000002", "step-0000004", "step-0000006", "step-0000008"]

    # A run killed during step 6's checkpoint: step 4 complete, step 6 written without its marker.
    resumed = tmp_path / "resumed"
    (resumed.with_name("resumed.partial") / "steps").mkdir(parents=True)
    for name in ("step-0000004", "step-0000006"):
        shutil.copytree(straight / "steps" / name, resumed.with_name("resumed.partial") / "steps" / name)
    (resumed.with_name("resumed.partial") / "steps" / "step-0000006" / "COMPLETE").unlink()
    # The same data spelled otherwise (relative, with ./) is the same data.
    respelled = [a if a != train_dir else "./corpus/" for a in args]
    proc = colm_in_process(*respelled, "-o", resumed, "--resume", "auto", cwd=tmp_path, env=env, check=True)
    assert "resuming from" in proc.stderr and "step-0000004" in proc.stderr

    final, halfway = weights(straight), weights(straight / "steps" / "step-0000004" / "model")
    again = weights(resumed)
    assert all(torch.equal(final[n], again[n]) for n in final)
    assert any(not torch.equal(final[n], halfway[n]) for n in final)
    logged = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert logged[:4] == [5, 6, 7, 8]

    # Resuming with other data, sequence length or batch size is another run: refused, naming the change.
    step4 = straight / "steps" / "step-0000004"
    other_data = tmp_path / "other.txt"
    other_data.write_text("other text " * 2000)
    changes = [
        ({"--data": other_data}, f"other data (--data {train_dir} then, {other_data} now"),
        ({"--seq-len": "16", "--batch-size": "2"}, "--batch-size 4 -> 2; --seq-len 32 -> 16"),
        ({"--steps": "3"}, "at step 4, beyond --steps 3"),
    ]
    for changed, message in changes:  # each flag's value replaced in args
        changed_args = [str(changed[prev]) if prev in changed else a for prev, a in zip([""] + args, args)]
        proc = colm_in_process(*changed_args, "-o", tmp_path / "other", "--resume", step4, env=env)
        assert_one_line_error(proc, 2, message)
        assert not (tmp_path / "other").exists() and not (tmp_path / "other.partial").exists()
    # The same spelling with other contents is other data.
    with open(sorted(train_dir.iterdir())[0], "a") as f:
        f.write("# edited\n")
    proc = colm_in_process(*args, "-o", tmp_path / "other", "--resume", step4, env=env)
    assert_one_line_error(proc, 2, "that run trained on other data")
    assert not (tmp_path / "other").exists() and not (tmp_path / "other.partial").exists()


def test_sigterm_saves_a_complete_checkpoint_and_exits(tmp_path, env, corpus, base):
    train_dir, _ = corpus
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "colm_cli", "train", base, "--data", train_dir, "--steps", "100000", *FAST, "-o", out]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    metrics = tmp_path / "run.partial" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume auto" in stderr and stdout == ""
    saved = list((tmp_path / "run.partial" / "steps").iterdir())
    assert len(saved) == 1 and (saved[0] / "COMPLETE").is_file()
    step = json.loads((saved[0] / "trainer_state.json").read_text())["step"]
    assert saved[0].name == f"step-{step:07d}"
    assert max(json.loads(line)["step"] for line in metrics.read_text().splitlines()) == step
    assert load(saved[0] / "model").config.n_chains == 2
    assert not out.exists()


def grown_model(air: bool) -> tuple[CoLM, CoLM]:
    """A 1-chain model and its growth by one chain: chain-1 tensors copied, the new LM-head block zero."""
    shape = dict(vocab_size=258, bos_token_id=256, eos_token_id=257, kv_share=air)
    small = CoLM(tiny_config(heads=[2], kv_heads=[1], ffn=[24], **shape), ByteTokenizer()).init_weights(std=0.1, seed=1)
    grown = CoLM(tiny_config(heads=[2, 2], kv_heads=[1, 0] if air else [1, 1], ffn=[24, 16], **shape), ByteTokenizer())
    grown.init_weights(std=0.1, seed=2)
    with torch.no_grad():
        grown_params = dict(grown.named_parameters())
        for name, p in small.named_parameters():
            grown_params[name].copy_(p)
        grown_params["lm_head.1"].zero_()
    return small, grown


@pytest.mark.parametrize("air", [False, True])
def test_freeze_chains_keeps_chain_one_bitwise(tmp_path, env, corpus, air):
    train_dir, _ = corpus
    small, grown = grown_model(air)
    save(grown, tmp_path / "grown", history=[])
    out = tmp_path / "tuned"
    colm_in_process(
        "train",
        tmp_path / "grown",
        "--data",
        train_dir,
        "--steps",
        "4",
        *FAST,
        "--lr",
        "1e-2",
        "--weight-decay",
        "0.5",
        "--freeze-chains",
        "1",
        "-o",
        out,
        env=env,
        check=True,
    )
    before, after = weights(tmp_path / "grown"), weights(out)
    for name in before:
        if chain_of(name) == 1:
            assert torch.equal(before[name], after[name]), name
    assert all(not torch.equal(before[n], after[n]) for n in before if chain_of(n) == 2 and "norm" not in n)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.equal(load(out)(ids, chains=1), small(ids))
        # With Air the keys and values of every layer come from chain 1 only: the frozen chain-1 KV
        # cache of the original model is the tuned model's cache too (same tensors, checked above).


def test_block_diagonal_growth_keeps_the_new_chain_apart(tmp_path, env, corpus):
    """--block-diagonal 1: chain 2 never reads chain 1 (its lateral blocks are zero after training), while
    everything else trains; so the 2-chain logits are chain 1's plus a term that chain 1 cannot change."""
    train_dir, _ = corpus
    _, grown = grown_model(air=False)
    save(grown, tmp_path / "grown", history=[])
    out = tmp_path / "apart"
    colm_in_process(
        "train",
        tmp_path / "grown",
        "--data",
        train_dir,
        "--steps",
        "4",
        *FAST,
        "--lr",
        "1e-2",
        "--weight-decay",
        "0.5",
        "--block-diagonal",
        "1",
        "-o",
        out,
        env=env,
        check=True,
    )
    before, after = weights(tmp_path / "grown"), weights(out)
    lateral = [n for n in after if chain_of(n) == 2 and after[n].ndim == 2 and not n.startswith(("embed", "lm_head"))]
    assert lateral and all(not after[n][:, : before[n.rsplit(".", 1)[0] + ".0"].shape[1]].any() for n in lateral)
    assert all(not torch.equal(before[n], after[n]) for n in before if "norm" not in n)  # chain 1 trained too
    model = load(out)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        chain_2_term = model(ids, chains=2) - model(ids, chains=1)
        for name, p in model.named_parameters():
            if chain_of(name) == 1:
                p.add_(torch.randn_like(p))
        assert torch.allclose(model(ids, chains=2) - model(ids, chains=1), chain_2_term, atol=1e-5)


def test_block_diagonal_refuses_air():
    from colm_core.errors import ColmError
    from colm_core.options import TrainOptions
    from colm_core.train import check_for_model

    _, air = grown_model(air=True)
    with pytest.raises(ColmError, match="CoLM-Air"):
        check_for_model(TrainOptions(block_diagonal=1, seq_len=32), air.config)
    check_for_model(TrainOptions(block_diagonal=1, seq_len=32), grown_model(air=False)[1].config)


def test_all_scales_loss_is_the_sum_of_separate_losses(monkeypatch):
    model = tiny_model(seed=3)
    x, y = torch.randint(0, 97, (2, 2, 20))

    def separate():
        model.zero_grad()
        total = sum(F.cross_entropy(model(x, chains=k).flatten(0, 1), y.flatten(), reduction="sum") for k in (1, 2, 3))
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters()]

    def combined():
        model.zero_grad()
        total = MultiScaleLoss(model, [1, 2, 3])(x, y).total
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_grads = separate()
    for rows in (None, 7):  # one chunk (what fits), and 7-row chunks
        if rows:
            monkeypatch.setattr(losses, "chunk_rows", lambda *args: rows)
        loss, grads = combined()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)  # float32 rounding of a different summation order


@pytest.mark.parametrize("chunk_bytes, chunks", [(losses.LOSS_CHUNK_BYTES, [1, 1]), (97 * 50 * 8, [2, 1])])
def test_eval_loss_is_the_cross_entropy_of_each_submodel(monkeypatch, chunk_bytes, chunks):
    """colm eval goes through training's chunked multi-scale loss and still gives each k-chain model's CE."""
    from colm_core.evaluate import evaluate_tokens

    # 97 * 50 * 8: chunks of at most 50 rows (two scales, 4 bytes each), so the batch of two 32-token windows
    # is cut in two chunks of 32 rows; the last window goes alone
    monkeypatch.setattr(losses, "LOSS_CHUNK_BYTES", chunk_bytes)
    calls = []
    monkeypatch.setattr(
        losses, "chunk_rows", lambda n, *a, _f=losses.chunk_rows: calls.append(-(-n // _f(n, *a))) or _f(n, *a)
    )
    model = tiny_model(seed=2)
    ids = torch.randint(0, 97, (3 * 32 + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    report = evaluate_tokens(model, ids, [3, 1], seq_len=32, batch_size=2)
    windows = torch.tensor([ids[i : i + 33] for i in range(0, 96, 32)])
    with torch.no_grad():
        for r in report["results"]:
            direct = F.cross_entropy(model(windows[:, :-1], chains=r["chains"]).flatten(0, 1), windows[:, 1:].flatten())
            assert r["loss"] == pytest.approx(direct.item(), rel=1e-6)
    assert [r["chains"] for r in report["results"]] == [1, 3] and report["tokens"] == 96
    assert calls == chunks


def test_all_scales_loss_holds_about_one_logits_chunk(monkeypatch):
    """Training every scale with a large vocabulary keeps no full logits tensor per scale for backward."""
    monkeypatch.setattr(losses, "LOSS_CHUNK_BYTES", 2**18)
    vocab = 8192
    model = CoLM(tiny_config(vocab_size=vocab)).init_weights(seed=0)
    x = torch.randint(0, vocab, (4, 64))

    def saved_bytes(scales):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            MultiScaleLoss(model, scales)(x, x)
        return total

    one_logits = x.numel() * vocab * 4
    assert saved_bytes([1, 2, 3]) - saved_bytes([3]) < one_logits / 4
    assert saved_bytes([1, 2, 3]) < one_logits


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--data", "missing.txt"], "no such file"),
        (["--data", "empty.txt"], "empty"),
        (["--seq-len", "65"], "above the model's maximum of 64"),
        (["--strategy", "zero3"], "--strategy zero3: choose one of ddp, fsdp"),
        (["--freeze-chains", "2"], "--freeze-chains 2"),
        (["--block-diagonal", "2"], "--block-diagonal 2"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, env, base, flags, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "text.txt").write_text("some text " * 500)
    data = [] if "--data" in flags else ["--data", "text.txt"]
    proc = colm_in_process("train", base, *data, "--seq-len", "32", *flags, "--steps", "1", cwd=tmp_path, env=env)
    assert_one_line_error(proc, 2, message)
    assert not any(p.name.startswith("base-train") for p in Path(base).parent.iterdir())


def test_large_vocabulary_tokenizer_json_and_token_cache(tmp_path, env, corpus, monkeypatch):
    """A 128K-vocabulary model with a tokenizer.json trains; tokens are cached once per tokenizer, in the cache."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    train_dir, _ = corpus
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train(
        [str(f) for f in sorted(train_dir.iterdir())], trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]"])
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    model = init_model(
        InitOptions(
            heads=[2, 2],
            n_layers=1,
            head_dim=8,
            ffn=[16],
            max_seq_len=64,
            tokenizer=tmp_path / "tokenizer.json",
            vocab_size=128 * 1024,
        )
    )
    save(model, tmp_path / "big", history=[])
    files_before = sorted(p.name for p in train_dir.iterdir())
    colm_in_process(
        "train",
        tmp_path / "big",
        "--data",
        train_dir,
        "--steps",
        "2",
        *FAST,
        "-o",
        tmp_path / "trained",
        env=env,
        check=True,
    )
    cached = list((tmp_path / "cache" / "tokens").iterdir())
    assert len(cached) == 1 and sorted(p.name for p in train_dir.iterdir()) == files_before
    expected = sum(len(tok.encode(f.read_text(), add_special_tokens=False).ids) for f in sorted(train_dir.iterdir()))
    assert len(np.load(cached[0], mmap_mode="r")) == expected
    records = [json.loads(line) for line in (tmp_path / "trained" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"]["2"] < 12.0  # finite, about ln(131072) = 11.8 this early
    assert load(tmp_path / "trained").config.vocab_size == 128 * 1024

    # Same files and tokenizer: the cache entry is reused; the byte tokenizer gets its own entry.
    monkeypatch.setenv("COLM_CACHE_DIR", env["COLM_CACHE_DIR"])
    mtime = cached[0].stat().st_mtime_ns
    files = sorted(train_dir.iterdir())
    token_cache(files, open_checkpoint(tmp_path / "big").tokenizer())
    assert cached[0].stat().st_mtime_ns == mtime
    assert len(token_cache(files, ByteTokenizer())) == sum(len(f.read_bytes()) + 2 for f in files)
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2


def test_non_finite_input_weights_are_a_broken_input_not_a_divergence(tmp_path, env, base):
    model = load(base)
    with torch.no_grad():
        model.lm_head[1][5, 3] = float("inf")  # the 2-chain logits of token 5 become inf - inf = nan
    save(model, tmp_path / "broken", history=[])
    (tmp_path / "text.txt").write_text("some text " * 500)
    proc = colm_in_process(
        "train",
        tmp_path / "broken",
        "--data",
        tmp_path / "text.txt",
        "--steps",
        "3",
        *FAST,
        "-o",
        tmp_path / "out",
        env=env,
    )
    assert_one_line_error(proc, 2, "tensor 'lm_head.1' holds NaN or infinite values: the input model is broken")
    assert "--lr" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_frozen_chains_stay_bitwise_with_block_diagonal_and_outputs_follow_the_umask(tmp_path, env):
    """--block-diagonal zeroes only trainable chains' lateral blocks; a frozen chain that reads the earlier
    chains is refused, not changed. The run's directories get the umask's mode, as every command's do."""
    model = init_model(InitOptions(heads=[2, 2, 2], n_layers=1, head_dim=8, ffn=[16], max_seq_len=64))
    save(model, tmp_path / "three", history=[])
    (tmp_path / "text.txt").write_text("some text and more text " * 300)
    train = ["train", "--data", tmp_path / "text.txt", "--steps", "2", *FAST, "--lr", "1e-2", "--weight-decay", "0.5"]
    proc = colm_in_process(
        *train, tmp_path / "three", "--freeze-chains", "2", "--block-diagonal", "1", "-o", tmp_path / "refused", env=env
    )
    assert_one_line_error(proc, 2, "--freeze-chains keeps chain 2 unchanged")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()

    colm_in_process(
        *train,
        tmp_path / "three",
        "--freeze-chains",
        "1",
        "--block-diagonal",
        "1",
        "-o",
        tmp_path / "apart",
        env=env,
        check=True,
    )
    umask = os.umask(0o002)
    try:  # chain 2 reads nothing of chain 1 now, so freezing it with --block-diagonal 1 changes nothing
        colm_in_process(
            *train,
            tmp_path / "apart",
            "--freeze-chains",
            "2",
            "--block-diagonal",
            "1",
            "--save-every",
            "1",
            "-o",
            tmp_path / "again",
            env=env,
            check=True,
        )
    finally:
        os.umask(umask)
    original, apart, again = weights(tmp_path / "three"), weights(tmp_path / "apart"), weights(tmp_path / "again")
    for name in original:
        if chain_of(name) == 1:
            assert torch.equal(original[name], apart[name]), name
        if chain_of(name) <= 2:
            assert torch.equal(apart[name], again[name]), name
    assert any(not torch.equal(apart[n], again[n]) for n in apart if chain_of(n) == 3)
    step = tmp_path / "again" / "steps" / "step-0000002"
    for directory in (tmp_path / "again", tmp_path / "again" / "steps", step, step / "model"):
        assert directory.stat().st_mode & 0o777 == 0o775, directory


def fused_adamw(monkeypatch) -> None:
    """colm train with the optimizer it takes on CUDA, on the CPU: the fused AdamW, which skips a non-finite
    update on the device instead of the host deciding whether to step."""
    from colm_core.train import Trainer

    make = Trainer.make_optimizer

    def fused(self):
        groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in make(self).param_groups]
        return torch.optim.AdamW(groups, fused=True)

    monkeypatch.setattr(Trainer, "make_optimizer", fused)


def count_device_reads(monkeypatch) -> list[int]:
    """Per training step, how often the host read a tensor's value (on a GPU, each read is a sync)."""
    from colm_core.train import Trainer

    reads: list[int] = []
    inside = [False]

    def counting(real):
        def read(t, *args):
            if inside[0]:
                reads[-1] += 1
            return real(t, *args)

        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    step = Trainer.train_step

    def counted(self):
        reads.append(0)
        inside[0] = True
        try:
            return step(self)
        finally:
            inside[0] = False

    monkeypatch.setattr(Trainer, "train_step", counted)
    return reads


def test_with_the_fused_adamw_a_step_reads_the_device_once(monkeypatch, tmp_path, env, corpus, base):
    fused_adamw(monkeypatch)
    reads = count_device_reads(monkeypatch)
    out = tmp_path / "out"
    colm_in_process("train", base, "--data", corpus[0], "--steps", "3", *FAST, "-o", out, env=env, check=True)
    assert reads == [1, 1, 1]  # the losses, the gradient norm and the weights' check, read together
    trained, before = weights(out), weights(base)
    assert all(t.isfinite().all() for t in trained.values())
    assert any(not torch.equal(trained[name], before[name]) for name in before)


@pytest.mark.parametrize("optimizer", ["foreach", "fused"])
def test_a_non_finite_loss_skips_the_update_with_either_optimizer(monkeypatch, tmp_path, env, base, optimizer):
    """A skipped step leaves the weights as they were: with the fused AdamW the device skips it, by found_inf."""
    from colm_core.train import Trainer

    if optimizer == "fused":
        fused_adamw(monkeypatch)
    (tmp_path / "text.txt").write_text("some text " * 500)
    seen = {}
    step = Trainer.train_step

    def watched(self):
        if not seen:  # after the input's check, which refuses non-finite weights: now only the loss can fail
            with torch.no_grad():
                self.model.lm_head[1][5, 3] = float("inf")  # the 2-chain logits of token 5 become inf - inf = nan
        before = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        result = step(self)
        seen.update(
            failure=result[1],
            unchanged=all(
                torch.equal(before[name].nan_to_num(), p.detach().nan_to_num())
                for name, p in self.model.named_parameters()
            ),
        )
        return result

    monkeypatch.setattr(Trainer, "train_step", watched)
    proc = colm_in_process(
        "train", base, "--data", tmp_path / "text.txt", "--steps", "3", *FAST, "-o", tmp_path / "out", env=env
    )
    assert_one_line_error(proc, 1, "non-finite loss at step 1")
    assert seen == {"failure": "loss", "unchanged": True}
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_an_output_that_holds_the_training_data(tmp_path, base, env, monkeypatch):
    """The check lives in the core, not only in the CLI: train() with force=True would empty OUT.partial and
    replace OUT, so neither may hold the data it reads."""
    from colm_core.errors import ColmError
    from colm_core.options import TrainOptions
    from colm_core.train import train

    monkeypatch.setenv("COLM_CACHE_DIR", env["COLM_CACHE_DIR"])
    for out in (tmp_path / "run", tmp_path / "run.partial"):
        data = out / "text.txt"
        data.parent.mkdir()
        data.write_text("some text " * 500)
        opts = TrainOptions(data=[str(data)], steps=1, batch_size=2, seq_len=16)
        with pytest.raises(ColmError, match="contains the input"):
            train(base, tmp_path / "run", opts, force=True)
        assert data.read_text() == "some text " * 500
        shutil.rmtree(data.parent)


def test_config_file_then_flags(tmp_path):
    from colm_core.errors import ColmError
    from colm_core.train import TrainOptions

    (tmp_path / "run.toml").write_text('steps = 7\nbatch-size = 4\nlr = 0.01\nchain_loss = "full"\n')
    opts = TrainOptions.from_sources(tmp_path / "run.toml", {"lr": 0.5, "seed": None})
    assert (opts.steps, opts.batch_size, opts.lr, opts.chain_loss, opts.seed) == (7, 4, 0.5, "full", 0)
    assert opts.scales(3) == [3] and TrainOptions(freeze_chains=1).scales(3) == [2, 3]
    (tmp_path / "bad.json").write_text('{"stepz": 3}')
    with pytest.raises(ColmError, match="unknown key 'stepz'"):
        TrainOptions.from_sources(tmp_path / "bad.json", {})


@pytest.mark.parametrize("schedule, middle", [("cosine", 0.55), ("linear", 0.55), ("constant", 1.0)])
def test_learning_rate_schedule(schedule, middle):
    from colm_core.train import TrainOptions

    opts = TrainOptions(steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule=schedule)
    assert [opts.learning_rate(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert opts.learning_rate(60) == pytest.approx(middle)  # halfway through the decay
    assert opts.learning_rate(110) == pytest.approx(0.1 if schedule != "constant" else 1.0)
    assert opts.learning_rate(10) == pytest.approx(1.0)
