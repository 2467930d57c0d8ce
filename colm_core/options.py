"""One definition of every command option: a dataclass field holds its default, help text and valid range.

The CLI builds its flags from these fields (colm_cli/options.py), `colm train --config` files are read
against them, and every value, from a flag, a config file or Python, is checked in one place. Nothing
here imports torch, so `colm --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from colm_core.errors import ColmError


@dataclass(frozen=True)
class Range:
    """The numbers a value may take: low and/or high bound, each closed or open. Never NaN or infinite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)  # [0, 1]
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
BETA = Range(0, 1, high_open=True)  # [0, 1): an AdamW moment decay
TOP_P = Range(0, 1, low_open=True)  # (0, 1]: a probability mass


def check_range(flag: str, value: float | list[float], valid: Range, help: str) -> None:
    """Refuse a number (or a list with a number) outside `valid`, naming the flag, the range and what it is."""
    is_list = isinstance(value, list)
    if not all(v in valid for v in (value if is_list else [value])):
        shown = ",".join(f"{v:g}" for v in value) if is_list else f"{value:g}"
        raise ColmError(f"{flag} {shown}: {'each value ' if is_list else ''}must be {valid} ({help.rstrip('.')})")


def option(default, help: str, *, range: Range | None = None, choices: tuple[str, ...] | None = None,
           flag: str | None = None, example: str | None = None, hint: str | None = None):
    """A dataclass field that is also a command-line option.

    range applies to a number and to every number of a list; choices to a string. flag: the option's
    name when it is not the field's. example: a comma-separated value, for list options given as
    "4,4,4,4". hint: added to the error when the flag's text is not a value of its type ("{value}" is
    replaced by that text).
    """
    meta = {"help": help, "range": range, "choices": choices, "flag": flag, "example": example, "hint": hint}
    return field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def value_type(cls, f: dataclasses.Field) -> tuple[type, bool]:
    """(scalar type, is a list) of a field annotated T, T | None, list[T] or list[T] | None."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


def is_a(value, kind: type) -> bool:
    if isinstance(value, bool) and kind is not bool:  # True is an int to Python, not to a user
        return False
    return isinstance(value, {float: (int, float), Path: (str, Path)}.get(kind, kind))


def parse_text(cls, f: dataclasses.Field, text: str):
    """A flag's text -> the field's value; comma-separated for list fields of numbers ("4,4,4,4")."""
    kind, is_list = value_type(cls, f)
    parts = [p.strip() for p in text.split(",") if p.strip()] if is_list else [text]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        what = f"comma-separated {kind.__name__}s, e.g. {f.metadata['example']}" if is_list else TYPE_WORDS[kind]
        hint = f.metadata.get("hint")
        raise ColmError(f"{flag_name(f)} {text!r}: expected {what}" + (f"; {hint.format(value=text)}" if hint else "")
                        ) from None
    return values if is_list else values[0]


def conforms(value, kind: type, is_list: bool) -> bool:
    if is_list:
        return isinstance(value, list) and all(is_a(v, kind) for v in value)
    return is_a(value, kind)


def expected_type(kind: type, is_list: bool) -> str:
    return f"a list of {kind.__name__} values" if is_list else TYPE_WORDS[kind]


def from_config_value(cls, f: dataclasses.Field, value, source: str):
    """A --config file's value -> the field's value: a string for a list of strings is a one-element list,
    a string for a list of numbers is read like the flag ("1,1,2"), an integer for a float is that float."""
    kind, is_list = value_type(cls, f)
    if is_list and isinstance(value, str):
        return [value] if kind is str else parse_text(cls, f, value)
    if is_list and is_a(value, kind):
        value = [value]
    if not conforms(value, kind, is_list):
        raise ColmError(f"--config {source}: {f.name} = {value!r} is not {expected_type(kind, is_list)}")
    convert = float if kind is float else Path if kind is Path else (lambda v: v)
    return [convert(v) for v in value] if is_list else convert(value)


def check(obj) -> None:
    """Every field of an options dataclass has its type and lies in its range (None: the default applies)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        kind, is_list = value_type(type(obj), f)
        if not conforms(value, kind, is_list):
            raise ColmError(f"{flag_name(f)} {value!r}: expected {expected_type(kind, is_list)}")
        valid, choices = f.metadata.get("range"), f.metadata.get("choices")
        if valid is not None:
            check_range(flag_name(f), value, valid, f.metadata["help"])
        if choices is not None and value not in choices:
            raise ColmError(f"{flag_name(f)} {value}: choose one of {', '.join(choices)}")


def from_sources(cls, config_file: Path | None, flags: dict):
    """Defaults, then a --config file (JSON or TOML, keys as the flags), then the flags given (not None)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    if config_file is not None:
        try:
            text = Path(config_file).read_text()
            read = tomllib.loads(text) if str(config_file).endswith(".toml") else json.loads(text)
        except (OSError, ValueError) as e:
            raise ColmError(f"--config {config_file}: cannot read it ({e}); give a JSON or TOML file") from None
        if not isinstance(read, dict):
            raise ColmError(f"--config {config_file}: expected a table of options, e.g. {{\"steps\": 100}}")
        for key, value in read.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ColmError(f"--config {config_file}: unknown key {key!r}; valid keys: {', '.join(fields)}")
            values[name] = from_config_value(cls, fields[name], value, str(config_file))
    for name, value in flags.items():
        if isinstance(value, str) and value_type(cls, fields[name])[0] is not str:
            value = parse_text(cls, fields[name], value)  # "4,4,4,4", or a number given as text
        if value is not None:
            values[name] = value
    return cls(**values)


SCHEDULES = ("cosine", "linear", "constant")
STRATEGIES = ("ddp", "fsdp")  # how `train --nproc N` spreads the model over its processes


@dataclass
class TrainOptions:
    """`colm train`'s options (colm_core/train.py runs them): each field is a flag and a --config key."""

    data: list[str] | None = option(
        None, "Text file, directory or glob (repeat for more); default: the embedded corpus.")
    steps: int = option(200, "Optimizer steps.", range=AT_LEAST_ONE)
    batch_size: int = option(8, "Sequences per optimizer step, over all processes and micro-steps.",
                             range=AT_LEAST_ONE)
    grad_accum: int = option(1, "Micro-steps per optimizer step.", range=AT_LEAST_ONE)
    seq_len: int = option(256, "Tokens per training sequence.", range=AT_LEAST_ONE)
    lr: float = option(2e-3, "Peak learning rate.", range=POSITIVE)
    min_lr_ratio: float = option(0.1, "Final lr as a fraction of --lr.", range=UNIT)
    warmup_steps: int = option(20, "Linear warmup steps.", range=NON_NEGATIVE)
    schedule: str = option("cosine", "Learning-rate decay after the warmup.", choices=SCHEDULES)
    weight_decay: float = option(0.1, "AdamW weight decay of matrices.", range=NON_NEGATIVE)
    beta1: float = option(0.9, "AdamW beta1.", range=BETA)
    beta2: float = option(0.95, "AdamW beta2.", range=BETA)
    grad_clip: float = option(1.0, "Gradient norm clip, 0 for none.", range=NON_NEGATIVE)
    chain_loss: str = option("all", "all: train every scale in one forward; full: the last scale only.",
                             choices=("all", "full"))
    chain_weights: list[float] | None = option(None, "Loss weight per trained scale, e.g. 1,1,1,2.",
                                               range=NON_NEGATIVE, example="1,1,2")
    freeze_chains: int = option(0, "Freeze chains 1..K and train only the later ones (chain tuning).",
                                range=NON_NEGATIVE)
    block_diagonal: int = option(0, "Chains after K read nothing from chains 1..K: those weight blocks are set "
                                 "to zero and kept there (the block-diagonal growth ablation); 0 for off.",
                                 range=NON_NEGATIVE)
    seed: int = option(0, "Seed of the batch sampling.", range=NON_NEGATIVE)
    dtype: str = option("auto", "auto (float32 on CPU, bfloat16 autocast on GPU), float32, bfloat16, float16.")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda if available).")
    compile: bool = option(False, "torch.compile the model.")
    log_every: int = option(10, "Steps between logged losses.", range=AT_LEAST_ONE)
    eval_every: int = option(50, "Steps between validation runs, 0 for the end only.", range=NON_NEGATIVE)
    eval_windows: int = option(16, "Held-out windows per validation.", range=AT_LEAST_ONE)
    val_fraction: float = option(0.05, "Share of the tokens held out.", range=OPEN_UNIT)
    save_every: int = option(0, "Steps between step checkpoints, 0 for none (SIGINT/SIGTERM always save).",
                             range=NON_NEGATIVE)
    keep_checkpoints: int = option(2, "Step checkpoints kept.", range=AT_LEAST_ONE)
    strategy: str = option("ddp", "ddp or fsdp, under torchrun.", choices=STRATEGIES)

    def __post_init__(self):
        check(self)
        if self.block_diagonal and self.strategy == "fsdp":  # sharding replaces the parameters whose gradient it masks
            raise ColmError("--block-diagonal works with --strategy ddp (or one process), not fsdp")

    @classmethod
    def from_sources(cls, config_file: Path | None, flags: dict) -> "TrainOptions":
        return from_sources(cls, config_file, flags)

    def scales(self, n_chains: int) -> list[int]:
        """The chain counts whose loss is trained: frozen-only scales have no gradient, so they are left out."""
        if self.chain_loss == "full":
            return [n_chains]
        return list(range(self.freeze_chains + 1, n_chains + 1))

    def learning_rate(self, step: int) -> float:
        """Linear warmup to lr, then cosine or linear decay to lr * min_lr_ratio at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * decay)


@dataclass
class TaskOptions:
    """`colm eval --tasks`'s options (colm_core/lm_eval_adapter.py runs them): lm-evaluation-harness tasks."""

    tasks: str | None = option(
        None, "lm-evaluation-harness tasks, comma-separated, e.g. hellaswag,arc_easy: score every chain count "
              "on them instead of on text (needs pip install 'colm[eval]').")
    num_fewshot: int | None = option(None, "Few-shot examples per task (default: each task's own).",
                                     range=NON_NEGATIVE)
    limit: int | None = option(None, "Evaluate at most this many documents per task.", range=AT_LEAST_ONE)
    include_path: Path | None = option(None, "Directory of your own task YAML files (lm-eval's --include_path).")

    def __post_init__(self):
        check(self)
