"""Chain tuning vs full fine-tuning vs LoRA: adapting a model to a new text at the same training budget.

A 1-chain base model (a plain Llama) is adapted to a target text three ways, each for the same
steps x batch x sequence length on the same batches:
  chain  expand by one chain (sizes by --heads/--kv-heads/--ffn), train only the new chain, chain 1 frozen
  full   fine-tune every weight of the base
  lora   LoRA (peft) on the base exported as a transformers Llama, on every linear layer, at the rank
         whose trainable parameters come closest to the new chain's
and each result is measured in bits/byte on held-out target text (adaptation) and on another text
(forgetting). The grown model's 1-chain slice must equal the base exactly (checked tensor by tensor
and in bits/byte): chain tuning forgets nothing by construction, since the base is still inside.

Two settings:
  (default)        the base is a small colm model this script trains on five Austen novels; the target
                   is Bierce's Devil's Dictionary; forgetting is measured on Persuasion (issue 14, q. 4)
  --base MODEL     a pretrained Llama: a GGUF file (e.g. SmolLM2-135M-Instruct) or a Hugging Face
                   directory, imported and verified by colm; the target is Emma; forgetting is measured
                   on Bierce (issue 16)

    python -m benchmarks.experiments.chain_tuning [--quick]
    python -m benchmarks.experiments.chain_tuning --base SmolLM2-135M-Instruct.Q4_1.gguf

Resumable: every stage's output is a checkpoint written atomically, and each training run saves step
checkpoints, so running the same command again continues where it stopped. Writes JSON and a PNG
to --results (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from benchmarks.common import BOOKS, RESULTS, set_threads
from benchmarks.experiments.common import AUSTEN
from colm_core.cache import cache_root
from colm_core.optimizer_state import load_optimizer_state, save_optimizer_state
from colm_core.options import TrainOptions

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEST_FRACTION = 0.1  # the end of the target text is held out from every arm's training


@dataclass(frozen=True)
class Setting:
    target: str  # file in `data` that the arms adapt to
    other: str  # file in `data` on which forgetting is measured
    steps: int  # optimizer steps of each arm
    batch_size: int
    seq_len: int
    lr: dict  # arm -> peak learning rate
    eval_tokens: int  # tokens of each evaluated text
    new_chain: dict  # expand's heads, kv_heads, ffn
    base_steps: int = 0  # training of the small base model (default setting only)
    base_heads: int = 4
    seed: int = 0  # of the adaptation (batches, the new chain's initialisation, LoRA's); the base is seed 0's
    data: str = str(BOOKS)  # the directory of the books: AUSTEN (the small base model's), target and other


SETTINGS = {
    "default": Setting(
        target="bierce-devils-dictionary.txt",
        other="persuasion.txt",
        steps=300,
        batch_size=16,
        seq_len=256,
        lr={"chain": 3e-3, "full": 1e-3, "lora": 3e-3},
        eval_tokens=65536,
        new_chain={"heads": 1, "kv_heads": 1, "ffn": 96},
        base_steps=1200,
    ),
    "quick": Setting(
        target="bierce-devils-dictionary.txt",
        other="persuasion.txt",
        steps=4,
        batch_size=4,
        seq_len=64,
        lr={"chain": 3e-3, "full": 1e-3, "lora": 3e-3},
        eval_tokens=1024,
        new_chain={"heads": 1, "kv_heads": 1, "ffn": 32},
        base_steps=4,
        base_heads=2,
    ),
    "pretrained": Setting(
        target="emma.txt",
        other="bierce-devils-dictionary.txt",
        steps=40,
        batch_size=8,
        seq_len=128,
        lr={"chain": 1e-3, "full": 5e-5, "lora": 5e-4},
        eval_tokens=8192,
        new_chain={"heads": 1, "kv_heads": 1, "ffn": 256},
    ),
}


class Experiment:
    def __init__(self, setting: Setting, work: Path, base: str | None, device: str = "cpu"):
        self.s, self.work, self.base_source, self.device = setting, work, base, device
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_file = work / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        recorded = self.remember("setting", lambda: {"base": base, **setting.__dict__})
        if recorded != json.loads(json.dumps({"base": base, **setting.__dict__})):
            raise SystemExit(f"{work} holds a run with other settings ({recorded}); pass another --work")

    def remember(self, key: str, compute):
        """A stage's small result, computed once: a rerun after an interruption reads it back."""
        if key not in self.state:
            self.state[key] = compute()
            self.state_file.write_text(json.dumps(self.state, indent=2))
        return self.state[key]

    def split_target(self) -> tuple[Path, Path]:
        """The target text cut into a training part and a held-out test part (at a line break)."""
        text = (Path(self.s.data) / self.s.target).read_text()
        cut = text.index("\n", int(len(text) * (1 - TEST_FRACTION)))
        train, test = self.work / "target-train.txt", self.work / "target-test.txt"
        for path, part in ((train, text[:cut]), (test, text[cut:])):
            if not path.is_file():
                path.write_text(part)
        return train, test

    def options(self, arm: str, **overrides) -> TrainOptions:
        s = self.s
        return TrainOptions(
            data=[str(self.split_target()[0])],
            steps=s.steps,
            batch_size=s.batch_size,
            seed=s.seed,
            seq_len=s.seq_len,
            lr=s.lr[arm],
            warmup_steps=max(1, s.steps // 10),
            eval_every=0,
            eval_windows=4,
            save_every=max(1, s.steps // 5),
            device=self.device,
            dtype="float32",
            **overrides,
        )  # as LoRA trains, also on a GPU

    # --- stages ------------------------------------------------------------------------------

    def base(self) -> Path:
        out = self.work / "base"
        if out.is_dir():
            return out
        if self.base_source is None:
            return self.train_small_base(out)
        from colm_core.gguf import import_gguf, is_gguf_file
        from colm_core.llama import import_hf
        from colm_core.resolve import resolve_input

        source = resolve_input(self.base_source)
        start = time.perf_counter()
        report = (import_gguf if is_gguf_file(source) else import_hf)(source, out)
        self.remember(
            "import", lambda: {"source": str(source), "verification": report, "seconds": time.perf_counter() - start}
        )
        return out

    def train_small_base(self, out: Path) -> Path:
        """A 1-chain byte-level colm model trained on five Austen novels: the author the target is not."""
        from colm_core.checkpoint import history_entry, save
        from colm_core.init import InitOptions, init_model
        from colm_core.train import train

        init = InitOptions(preset="tiny", heads=[self.s.base_heads], ffn=[88 * self.s.base_heads])
        fresh = self.work / "base-init"
        if not fresh.is_dir():
            save(init_model(init), fresh, history=[history_entry("init", init.as_record())])
        opts = replace(
            self.options("chain"),
            data=[str(Path(self.s.data) / f) for f in AUSTEN],
            steps=self.s.base_steps,
            seed=0,
            lr=2e-3,
            warmup_steps=max(1, self.s.base_steps // 20),
            save_every=max(1, self.s.base_steps // 5),
        )
        train(fresh, out, opts, resume="auto")
        return out

    def train_arm(self, arm: str, start: Path, **overrides) -> Path:
        from colm_core.train import train

        out = self.work / arm
        if not out.is_dir():
            summary = {}
            train(
                start,
                out,
                self.options(arm, **overrides),
                resume="auto",
                on_event=lambda kind, record: summary.update(record) if kind == "end" else None,
            )
            self.state.pop(f"train-{arm}", None)
            self.remember(
                f"train-{arm}",
                lambda: {"seconds": summary["seconds"], "steps": summary["steps"], "tokens": summary["tokens"]},
            )
        return out

    def grown(self) -> Path:
        from colm_core.surgery import expand

        out = self.work / "grown-untrained"
        if not out.is_dir():
            expand(self.base(), out, add_chains=1, seed=self.s.seed, **self.s.new_chain)
        return self.train_arm("chain", out, freeze_chains=1)

    def lora(self) -> Path:
        """LoRA on the base exported as a transformers Llama, trained on the batches colm train draws, merged,
        and imported back so that colm evaluates it as it does the others."""
        from colm_core.export import export
        from colm_core.llama import import_hf

        out = self.work / "lora"
        if out.is_dir():
            return out
        base_hf = self.work / "base-hf-llama"
        if not base_hf.is_dir():
            export(self.base(), base_hf, fmt="hf-llama")
        merged = self.work / "lora-merged"
        if not merged.is_dir():
            self.train_lora(base_hf, merged)
        import_hf(merged, out, verify=False)
        return out

    def train_lora(self, base_hf: Path, merged: Path) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        from colm_core.checkpoint import open_checkpoint
        from colm_core.data import sample_windows, split_tokens, token_cache

        opts = self.options("lora")
        model = LlamaForCausalLM.from_pretrained(base_hf, dtype=torch.float32).to(self.device)
        rank = self.lora_rank(model)
        torch.manual_seed(self.s.seed)  # LoRA's A matrices are drawn from torch's global generator
        model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
        )
        tokens = token_cache([Path(opts.data[0])], open_checkpoint(self.base()).tokenizer())
        train_tokens, _ = split_tokens(tokens, opts.seq_len, opts.val_fraction)  # as colm train splits
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(opts.beta1, opts.beta2), weight_decay=0.0)
        resume = self.work / "lora-state.safetensors"  # safetensors, as everything colm writes: no pickle
        step, seconds = 0, 0.0
        if resume.is_file():
            groups = optimizer.state_dict()["param_groups"]
            state, lora = load_optimizer_state(resume, groups)
            model.load_state_dict({k[len("model::") :]: v for k, v in lora.items()}, strict=False)
            optimizer.load_state_dict(state)
            with safe_open(resume, framework="pt") as saved:
                step, seconds = int(saved.metadata()["step"]), float(saved.metadata()["seconds"])
        model.train()
        start = time.perf_counter() - seconds
        while step < opts.steps:
            for group in optimizer.param_groups:
                group["lr"] = opts.learning_rate(step)
            rows = sample_windows(train_tokens, opts.seq_len, opts.batch_size, opts.seed, step).to(self.device)
            logits = model(input_ids=rows[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % opts.save_every == 0 or step == opts.steps:
                lora = {f"model::{k}": v for k, v in model.state_dict().items() if "lora_" in k}
                save_optimizer_state(
                    resume.with_suffix(".tmp"),
                    optimizer.state_dict(),
                    extra=lora,
                    metadata={"step": str(step), "seconds": str(time.perf_counter() - start)},
                )
                resume.with_suffix(".tmp").replace(resume)
        self.state.pop("train-lora", None)
        self.remember(
            "train-lora",
            lambda: {
                "seconds": time.perf_counter() - start,
                "steps": step,
                "rank": rank,
                "parameters": sum(p.numel() for p in params),
                "tokens": step * opts.batch_size * opts.seq_len,
            },
        )
        tmp = merged.with_name(merged.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.merge_and_unload().save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (base_hf / name).is_file():
                shutil.copyfile(base_hf / name, tmp / name)
        tmp.rename(merged)

    def lora_rank(self, model) -> int:
        """The rank whose trainable parameters come closest to the new chain's."""
        per_rank = sum(
            m.in_features + m.out_features
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
        )
        return max(1, round(self.chain_parameters() / per_rank))

    def chain_parameters(self) -> int:
        from colm_core.card import parameters_per_chain
        from colm_core.checkpoint import open_checkpoint
        from colm_core.surgery import expand_config

        cfg = expand_config(open_checkpoint(self.base()).config, 1, **self.s.new_chain)
        return sum(parameters_per_chain(cfg)[1:])

    def evaluate(self, name: str, path: Path, chains: list[int]) -> dict:
        """bits/byte of each chain count on the held-out target text and on the other text."""

        def compute():
            import colm_core
            from colm_core.evaluate import evaluate

            model = colm_core.load(path, device=self.device, dtype=torch.float32)
            texts = {
                "target": self.split_target()[1].read_text(),
                "other": (Path(self.s.data) / self.s.other).read_text(),
            }
            out = {}
            for text_name, text in texts.items():
                report = evaluate(model, [text], chains, seq_len=self.s.seq_len, max_tokens=self.s.eval_tokens)
                out[text_name] = {str(r["chains"]): r["bits_per_byte"] for r in report["results"]}
            return out

        return self.remember(f"eval-{name}", compute)

    def slice_equals_base(self, grown: Path) -> dict:
        """The trained grown model's chain-1 tensors are the base's, bit for bit."""

        def compute():
            from colm_core.checkpoint import open_checkpoint

            base, ckpt = open_checkpoint(self.base()), open_checkpoint(grown)
            names = list(base.weight_map)
            same = all(torch.equal(a, b) for (_, a), (_, b) in zip(base.tensors(names), ckpt.tensors(names)))
            return {"chain1_tensors_equal_base": same, "tensors": len(names)}

        return self.remember("slice-check", compute)

    def exports(self, grown: Path) -> dict:
        """The grown model as `--format hf`, and its frozen chain as a plain Llama (`--format hf-llama`)."""

        def compute():
            from colm_core.export import export
            from colm_core.surgery import slice_

            frozen = self.work / "grown-chain1"
            if not frozen.is_dir():
                slice_(grown, frozen, chains=1)
            reports = {}
            for fmt, source in (("hf", grown), ("hf-llama", frozen)):
                out = self.work / f"export-{fmt}"
                shutil.rmtree(out, ignore_errors=True)
                reports[fmt] = {"path": str(out), **export(source, out, fmt=fmt)}
            return reports

        return self.remember("exports", compute)

    def run(self) -> dict:
        base = self.base()
        results = {"base": self.evaluate("base", base, [1])}
        grown = self.grown()
        results["chain"] = self.evaluate("chain", grown, [1, 2])
        results["full"] = self.evaluate("full", self.train_arm("full", base), [1])
        results["lora"] = self.evaluate("lora", self.lora(), [1])
        return {
            "setting": self.s.__dict__,
            "base_source": self.base_source,
            "results": results,
            "trainable_parameters": {
                "chain": self.chain_parameters(),
                "full": sum(parameters(base)),
                "lora": self.state["train-lora"]["parameters"],
            },
            "training": {arm: self.state.get(f"train-{arm}") for arm in ("chain", "full", "lora")},
            "import": self.state.get("import"),
            "slice_check": self.slice_equals_base(grown),
            "exports": self.exports(grown),
        }


def parameters(path: Path) -> list[int]:
    from colm_core.card import parameters_per_chain
    from colm_core.checkpoint import open_checkpoint

    return parameters_per_chain(open_checkpoint(path).config)


def rows_of(payload: dict) -> list[list]:
    r, t, n = payload["results"], payload["training"], payload["trainable_parameters"]

    def row(label, res, k, arm):
        train = t.get(arm) if arm else None
        return [
            label,
            res["target"][k],
            res["other"][k],
            n.get(arm, 0) if arm else 0,
            round(train["seconds"]) if train else "-",
        ]

    return [
        row("base (no tuning)", r["base"], "1", None),
        row("chain tuning: grown model (2 chains)", r["chain"], "2", "chain"),
        row("chain tuning: 1-chain slice", r["chain"], "1", None),
        row("full fine-tuning", r["full"], "1", "full"),
        row(f"LoRA (rank {t['lora']['rank']})", r["lora"], "1", "lora"),
    ]


def plot(payload: dict, rows: list[list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["setting"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [r[0].replace(": ", ":\n") for r in rows]
    for ax, column, title in (
        (axes[0], 1, f"target: held-out {s['target']}"),
        (axes[1], 2, f"forgetting: {s['other']}"),
    ):
        values = [r[column] for r in rows]
        bars = ax.bar(range(len(rows)), values, color=["grey", "tab:blue", "lightsteelblue", "tab:orange", "tab:green"])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(min(values) * 0.9, max(values) * 1.04)
        ax.set_ylabel("bits/byte (lower is better)")
        ax.set_title(title, fontsize=10)
    base = payload["base_source"] or "small colm model trained on Austen"
    fig.suptitle(
        f"Chain tuning vs full fine-tuning vs LoRA: {Path(base).name}, {s['steps']} steps x "
        f"{s['batch_size']} x {s['seq_len']} tokens",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--base",
        help="A pretrained Llama (GGUF file or Hugging Face directory); default: train a small colm model on Austen",
    )
    p.add_argument("--quick", action="store_true", help="A tiny run of a minute or less (the test suite's)")
    p.add_argument("--steps", type=int, help="Optimizer steps of each arm")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--eval-tokens", type=int, help="Tokens of each evaluated text")
    p.add_argument("--heads", type=int, help="Query heads of the new chain")
    p.add_argument("--kv-heads", type=int, help="KV heads of the new chain")
    p.add_argument("--ffn", type=int, help="FFN units of the new chain")
    p.add_argument("--lr-chain", type=float)
    p.add_argument("--lr-full", type=float)
    p.add_argument("--lr-lora", type=float)
    p.add_argument("--seed", type=int, default=0, help="Seed of the adaptation: batches and new weights (default: 0)")
    p.add_argument(
        "--data", type=Path, default=BOOKS, help="Directory of the books (default: data/books/ or $COLM_BOOKS)"
    )
    p.add_argument("--work", type=Path, help="Where checkpoints go (default: colm's cache)")
    p.add_argument("--results", type=Path, default=RESULTS, help="Directory of the JSON and PNG")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the arms train and are evaluated: cpu, cuda (default: cpu)")
    args = p.parse_args()
    set_threads(args.threads)
    setting = SETTINGS["quick" if args.quick else "pretrained" if args.base else "default"]
    overrides = {
        k: getattr(args, k) for k in ("steps", "batch_size", "seq_len", "eval_tokens") if getattr(args, k) is not None
    }
    new_chain = {
        **setting.new_chain,
        **{k: getattr(args, k) for k in ("heads", "kv_heads", "ffn") if getattr(args, k) is not None},
    }
    lr = {
        **setting.lr,
        **{arm: getattr(args, f"lr_{arm}") for arm in setting.lr if getattr(args, f"lr_{arm}") is not None},
    }
    setting = replace(setting, new_chain=new_chain, lr=lr, data=str(args.data.resolve()), seed=args.seed, **overrides)
    name = (
        "chain_tuning"
        + (f"-{Path(args.base).stem.split('.')[0]}" if args.base else "")
        + ("-quick" if args.quick else "")
        + (f"-seed{args.seed}" if args.seed else "")
    )
    work = args.work or cache_root() / "experiments" / name

    start = time.perf_counter()
    payload = Experiment(setting, work, args.base, args.device).run()
    payload["command"] = " ".join(["python -m benchmarks.experiments.chain_tuning", *sys.argv[1:]])
    rows = rows_of(payload)
    args.results.mkdir(parents=True, exist_ok=True)
    plot(payload, rows, args.results / f"{name}.png")
    from benchmarks.common import report

    report(
        f"{name}: bits/byte after {setting.steps} steps of {setting.batch_size} x {setting.seq_len} tokens "
        f"(this invocation: {time.perf_counter() - start:.0f} s)",
        ["model", "target bits/byte", "other bits/byte", "trainable parameters", "train seconds"],
        rows,
        payload,
        args.results / f"{name}.json",
        notes=[
            f"1-chain slice of the grown model equals the base: "
            f"{payload['slice_check']['chain1_tensors_equal_base']} "
            f"(bits/byte {payload['results']['chain']['target']['1']:.6f} vs "
            f"{payload['results']['base']['target']['1']:.6f})"
        ],
    )


if __name__ == "__main__":
    main()
