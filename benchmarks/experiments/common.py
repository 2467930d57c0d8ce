"""What every experiment shares: flags, the corpus, resumable arms, held-out bits per byte, FLOPs, plots.

An experiment is `python -m benchmarks.experiments.NAME [--quick]`, run from the repository root. It
compares *arms* (one trained model each, or one measurement). Everything an arm produces lives in
the work directory (--workdir): its colm checkpoints and training runs, and `arms/ARM.json`, written
last. Rerunning skips every arm that has its JSON and continues a stopped training run from its
newest step checkpoint (colm's `train --resume auto`), so an interrupted experiment continues.
Results go to a JSON file and a PNG plot; the printed table is the same as benchmarks/common.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import BOOKS, RESULTS, set_threads
from colm_core.api import load, save
from colm_core.evaluate import evaluate_tokens, token_stream
from colm_core.init import InitOptions, init_model
from colm_core.model import chain_of, expected_shapes
from colm_core.options import TrainOptions
from colm_core.run_directory import complete_steps
from colm_core.train import train

REPO = Path(__file__).resolve().parents[2]
HELD_OUT = "persuasion.txt"
AUSTEN = ("prideprejudice.txt", "sensesensibility.txt", "northangerabbey.txt", "mansfieldpark.txt", "emma.txt")


def parser(doc: str, name: str, trains: bool = True) -> argparse.ArgumentParser:
    """The flags every experiment shares (--train, --val and --workdir where it trains models). Its own
    flags (sizes) come after; --quick shrinks them all."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of a minute or two")
    if trains:
        add_training_flags(p, name)
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON file (default: %(default)s)")
    p.add_argument("--plot", type=Path, default=RESULTS / f"{name}.png", help="PNG file (default: %(default)s)")
    # One thread: on a small shared machine, threads waiting on each other make training several times
    # slower and its wall times noise (measured: 1 thread 4-5k tokens/s, 2 threads 0.4-6k under load).
    p.add_argument("--threads", type=int, default=1, help="torch threads, 0 for torch's choice (default: %(default)s)")
    return p


def add_training_flags(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument(
        "--train",
        nargs="+",
        type=Path,
        default=[BOOKS / f for f in AUSTEN],
        help="training text files (default: five Austen novels in data/books/ or $COLM_BOOKS)",
    )
    p.add_argument(
        "--val", type=Path, default=BOOKS / HELD_OUT, help="held-out text file for bits/byte (default: %(default)s)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "runs" / "experiments" / name,
        help="checkpoints and per-arm results; rerun with the same one to continue (default: %(default)s)",
    )
    # The sizes every experiment's byte-level models share; each script adds its own widths and steps.
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens (bytes) per evaluation")
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        help="comma-separated seeds (model init and batches), each a run of every arm; arms are kept per "
        "seed, so runs of other seeds can share a --workdir, also at the same time (default: 0)",
    )
    p.add_argument(
        "--device", default="cpu", help="where models train and are evaluated: cpu, cuda (default: %(default)s)"
    )


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated seeds, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct non-negative seeds, e.g. 0,1,2")
    return seeds


QUICK_TRAINING = dict(layers=1, batch_size=4, seq_len=32, curve_points=2, eval_tokens=512)


def parse(p: argparse.ArgumentParser, quick: dict) -> argparse.Namespace:
    """Parse the flags; with --quick, every size flag the user did not give takes its value in `quick`
    (for an experiment that trains, after the shared sizes of QUICK_TRAINING)."""
    args = p.parse_args()
    if hasattr(args, "workdir"):
        quick = QUICK_TRAINING | quick
    if args.quick:
        given = {a.split("=")[0] for a in sys.argv[1:] if a.startswith("--")}
        for key, value in quick.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    if hasattr(args, "workdir"):
        for f in [*args.train, args.val]:
            if not f.is_file():
                p.error(
                    f"{f}: no such file; put the novels in data/books/ (or name their directory in COLM_BOOKS), "
                    "or give --train FILES and --val FILE (plain text)"
                )
        check_workdir(p, args)
    set_threads(args.threads)
    return args


SETTINGS_FILE = "settings.json"
# Where results go and how fast: not what is computed. Nor how many seeds: arms are kept per seed, so
# a rerun with more seeds reuses the seeds it has.
NOT_SETTINGS = ("workdir", "out", "plot", "threads", "seeds")


def check_workdir(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A work directory belongs to one set of settings: finished arms are reused only by the same experiment."""
    settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}
    path = args.workdir / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [f"--{k.replace('_', '-')} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v]
        if changed:
            p.error(
                f"--workdir {args.workdir} holds a run with other settings ({'; '.join(changed)}); "
                "give another --workdir, or delete it to start over"
            )
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


# --- arms ----------------------------------------------------------------------------------


def arm(workdir: Path, name: str, run: Callable[[], dict]) -> dict:
    """The result of one arm: read from workdir/arms/NAME.json if it finished before, else run and record it."""
    path = workdir / "arms" / f"{name}.json"
    if path.is_file():
        print(f"{name}: done before, read {path}", file=sys.stderr)
        return json.loads(path.read_text())
    print(f"{name}: running", file=sys.stderr)
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)  # the arm counts as done only once its whole result is written
    return result


def new_model(path: Path, opts: InitOptions) -> Path:
    """A freshly initialised checkpoint at `path` (kept if it exists: initialisation is seeded)."""
    if not path.exists():
        save(init_model(opts), path)
    return path


def train_run(start: Path, out: Path, opts: TrainOptions) -> Path:
    """`colm train START -o OUT` with a step checkpoint every --save-every steps; continues a stopped run.

    The run directory keeps its step checkpoints (steps/step-N/model): `curve` evaluates them."""
    if out.exists():
        return out

    def progress(kind: str, record: dict) -> None:
        if kind in ("log", "end"):
            print(f"  {out.name}: {kind} {json.dumps(record)}", file=sys.stderr)

    return train(start, out, opts, resume="auto", on_event=progress)


def train_options(args: argparse.Namespace, **overrides) -> TrainOptions:
    """The experiments' training options: --device, no validation inside the run (the held-out book is used
    instead), a step checkpoint at every curve point, all of them kept."""
    save_every = max(1, overrides.get("steps", args.steps) // args.curve_points)
    base = dict(
        data=[str(f) for f in args.train],
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        device=args.device,
        dtype="float32",  # as on CPU, also on a GPU (colm's default there is bfloat16 autocast)
        eval_every=0,
        eval_windows=1,
        save_every=save_every,
        keep_checkpoints=args.curve_points + 2,
        log_every=max(1, args.steps // 10),
    )
    return TrainOptions(**(base | overrides))


# --- measurements --------------------------------------------------------------------------


def held_out_ids(args: argparse.Namespace, tokenizer) -> list[int]:
    return token_stream(tokenizer, [args.val.read_text(encoding="utf-8", errors="replace")])[: args.eval_tokens + 1]


def bits_per_byte(
    checkpoint: Path, ids: list[int], seq_len: int, chains: list[int] | None = None, device: str = "cpu"
) -> dict[int, float]:
    """Held-out bits/byte of each chain count (default: all of them) of a checkpoint, in windows of the
    training sequence length (positions a model never trained on would measure length generalisation)."""
    model = load(checkpoint, device=device)
    chains = chains or list(range(1, model.config.n_chains + 1))
    result = evaluate_tokens(model, ids, chains, seq_len=seq_len, batch_size=16)
    return {r["chains"]: r["bits_per_byte"] for r in result["results"]}


def curve(
    run_dir: Path, ids: list[int], seq_len: int, chains: list[int] | None = None, device: str = "cpu"
) -> list[dict]:
    """Held-out bits/byte at every step checkpoint of a finished run and at its end, with the tokens and
    seconds of training up to each (seconds include the run's own checkpoint saves)."""
    states = [
        (step_dir / "model", json.loads((step_dir / "trainer_state.json").read_text()))
        for step_dir in complete_steps(run_dir)
    ]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in logged if "seconds" in r][-1]  # the last step is always logged
    if not states or states[-1][1]["step"] < final["step"]:  # --save-every does not divide --steps
        states.append((run_dir, final))
    points = []
    for checkpoint, state in states:
        bpb = bits_per_byte(checkpoint, ids, seq_len, chains, device)
        points.append(
            {
                "step": state["step"],
                "tokens": state["tokens"],
                "seconds": state["seconds"],
                "bits_per_byte": {str(k): v for k, v in bpb.items()},
            }
        )
    return points


def non_embedding_parameters(cfg, chains: int | None = None) -> int:
    """Parameters of the first `chains` chains (default: all) outside the embedding and LM head."""
    k = chains or cfg.n_chains
    return sum(
        torch.Size(shape).numel()
        for name, shape in expected_shapes(cfg).items()
        if chain_of(name) <= k and not name.startswith(("embed.", "lm_head."))
    )


def train_step_flops(checkpoint: Path, opts: TrainOptions) -> int:
    """FLOPs of one optimizer step of `colm train` with these options (forward and backward of the loss
    at opts.batch_size x opts.seq_len tokens, frozen chains without gradients), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from colm_core.losses import MultiScaleLoss

    model = load(checkpoint).train()
    for name, p in model.named_parameters():
        p.requires_grad_(chain_of(name) > opts.freeze_chains)
    loss = MultiScaleLoss(model, opts.scales(model.config.n_chains))
    ids = torch.randint(0, 256, (opts.batch_size, opts.seq_len + 1))
    with FlopCounterMode(display=False) as counter:
        loss(ids[:, :-1], ids[:, 1:]).total.backward()
    return counter.get_total_flops()


def forward_flops(model, tokens: int, chains: int) -> int:
    """FLOPs of the k-chain sub-model's forward over one sequence of `tokens` tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 256, (1, tokens)), chains)
    return counter.get_total_flops()


# --- plots ---------------------------------------------------------------------------------


def figure(ncols: int, title: str):
    """A row of `ncols` axes under a title, drawn off-screen (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def plot_seeds(axes: list, name: str, per_seed: list[list[tuple[list, list]]]) -> None:
    """One arm's curves: per_seed[i] holds an (xs, ys) for each of `axes`. The first seed's line is solid and
    labelled, the other seeds' faint, all in the arm's colour."""
    color = None
    for i, lines in enumerate(per_seed):
        for ax, (xs, ys) in zip(axes, lines):
            (line,) = ax.plot(xs, ys, marker="o", color=color, label=None if i else name, alpha=0.4 if i else 1)
            color = line.get_color()


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
