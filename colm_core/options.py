"""One definition of every command option: a dataclass field holds its default, help text and valid range.

One dataclass per command (`colm init`'s is colm_core.init.InitOptions). The CLI builds its flags
from these fields (colm_cli/options.py), `colm train --config` files are read against them, and colm_core
takes them as its Python arguments (generate(model, prompt, GenerateOptions(top_p=0.9))). Every value,
from a flag, a config file or Python, is checked in one place, and a bad one is an OptionError that
names the field (top_p), which the CLI shows as the flag (--top-p). Nothing here imports torch, so
`colm --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from colm_core.config import INIT_STD, read_json
from colm_core.errors import ColmError, OptionError


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


def check_range(name: str, value: float | list[float], valid: Range, help: str, flags: dict | None = None) -> None:
    """Refuse a number (or a list with a number) outside `valid`, naming the option, the range and what it is."""
    is_list = isinstance(value, list)
    if not all(v in valid for v in (value if is_list else [value])):
        shown = ",".join(f"{v:g}" for v in value) if is_list else f"{value:g}"
        raise OptionError(
            f"{{{name}}} {{shown}}: {{each}}must be {{valid}} ({{what}})",
            flags,
            shown=shown,
            each="each value " if is_list else "",
            valid=str(valid),
            what=help.rstrip("."),
        )


REQUIRED = dataclasses.MISSING  # the default of an option that must be given


def option(
    default,
    help: str,
    *,
    range: Range | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    example: str | None = None,
    hint: str | None = None,
    negatable: bool = True,
    envvar: str | None = None,
):
    """A dataclass field that is also a command-line option.

    range applies to a number and to every number of a list; choices to a string. flag: the option's
    name when it is not the field's. example: a comma-separated value, for list options given as
    "4,4,4,4". hint: added to the error when the flag's text is not a value of its type, worded as an
    OptionError's message is: "{value}" is that text, "{heads}" names the option heads. negatable: a bool
    option also has its --no- form. envvar: the environment variable that gives the value when the flag
    is not given.
    """
    meta = {
        "help": help,
        "range": range,
        "choices": choices,
        "flag": flag,
        "example": example,
        "hint": hint,
        "negatable": negatable,
        "envvar": envvar,
    }
    return field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def flags_of(cls) -> dict[str, str]:
    """The flags of cls's options whose flag is not named after the field (n_layers: --layers)."""
    return {f.name: flag_name(f) for f in dataclasses.fields(cls) if f.metadata.get("flag")}


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
        raise OptionError(
            f"{{{f.name}}} {{text!r}}: expected {{what}}" + (f"; {hint}" if hint else ""),
            flags_of(cls),
            text=text,
            value=text,
            what=what,
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
    flags = flags_of(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        kind, is_list = value_type(type(obj), f)
        if not conforms(value, kind, is_list):
            raise OptionError(
                f"{{{f.name}}} {{value!r}}: expected {{what}}", flags, value=value, what=expected_type(kind, is_list)
            )
        valid, choices = f.metadata.get("range"), f.metadata.get("choices")
        if valid is not None:
            check_range(f.name, value, valid, f.metadata["help"], flags)
        if choices is not None and value not in choices:
            raise OptionError(
                f"{{{f.name}}} {{value}}: choose one of {{choices}}", flags, value=value, choices=", ".join(choices)
            )


def from_sources(cls, config_file: Path | None, flags: dict):
    """Defaults, then a --config file (JSON or TOML, keys as the flags), then the flags given (not None)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    if config_file is not None:
        fix = "give a JSON or TOML file"
        if str(config_file).endswith(".toml"):
            try:
                read = tomllib.loads(Path(config_file).read_text())
            except (OSError, ValueError) as e:
                raise ColmError(f"--config {config_file}: cannot read it ({e}); {fix}") from None
        else:
            read = read_json(config_file, fix)
        if not isinstance(read, dict):
            raise ColmError(f'--config {config_file}: expected a table of options, e.g. {{"steps": 100}}')
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
        None, "Text file, directory or glob (repeat for more); default: the embedded corpus."
    )
    steps: int = option(200, "Optimizer steps.", range=AT_LEAST_ONE)
    batch_size: int = option(8, "Sequences per optimizer step, over all processes and micro-steps.", range=AT_LEAST_ONE)
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
    chain_loss: str = option(
        "all", "all: train every scale in one forward; full: the last scale only.", choices=("all", "full")
    )
    chain_weights: list[float] | None = option(
        None, "Loss weight per trained scale, e.g. 1,1,1,2.", range=NON_NEGATIVE, example="1,1,2"
    )
    freeze_chains: int = option(
        0, "Freeze chains 1..K and train only the later ones (chain tuning).", range=NON_NEGATIVE
    )
    block_diagonal: int = option(
        0,
        "Chains after K read nothing from chains 1..K: those weight blocks are set "
        "to zero and kept there (the block-diagonal growth ablation); 0 for off.",
        range=NON_NEGATIVE,
    )
    seed: int = option(0, "Seed of the batch sampling.", range=NON_NEGATIVE)
    dtype: str = option("auto", "auto (float32 on CPU, bfloat16 autocast on GPU), float32, bfloat16, float16.")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda if available).")
    compile: bool = option(False, "torch.compile the model.")
    log_every: int = option(10, "Steps between logged losses.", range=AT_LEAST_ONE)
    eval_every: int = option(50, "Steps between validation runs, 0 for the end only.", range=NON_NEGATIVE)
    eval_windows: int = option(16, "Held-out windows per validation.", range=AT_LEAST_ONE)
    val_fraction: float = option(0.05, "Share of the tokens held out.", range=OPEN_UNIT)
    save_every: int = option(
        0, "Steps between step checkpoints, 0 for none (SIGINT/SIGTERM always save).", range=NON_NEGATIVE
    )
    keep_checkpoints: int = option(2, "Step checkpoints kept.", range=AT_LEAST_ONE)
    strategy: str = option("ddp", "ddp or fsdp, under torchrun.", choices=STRATEGIES)

    def __post_init__(self):
        check(self)
        if self.block_diagonal and self.strategy == "fsdp":  # sharding replaces the parameters whose gradient it masks
            raise OptionError("{block_diagonal} works with {strategy} ddp (or one process), not fsdp")

    @classmethod
    def from_sources(cls, config_file: Path | None, flags: dict) -> TrainOptions:
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
class ExpandOptions:
    """`colm expand`'s options (colm_core/surgery.py runs them)."""

    add_chains: int = option(1, "Number of chains to append.", range=AT_LEAST_ONE)
    heads: int | None = option(None, "Query heads of each new chain (default: the last chain's).", range=AT_LEAST_ONE)
    kv_heads: int | None = option(
        None,
        "KV heads of each new chain (default: the last chain's; CoLM-Air: none, chain 1's are shared).",
        range=NON_NEGATIVE,
    )
    ffn: int | None = option(None, "FFN units of each new chain (default: the last chain's).", range=AT_LEAST_ONE)
    air: bool = option(
        False, "Make a 1-chain model CoLM-Air: new chains read chain 1's keys and values.", negatable=False
    )
    init_std: float = option(INIT_STD, "Standard deviation of the new chains' random blocks.", range=POSITIVE)
    seed: int = option(0, "Seed of the new chains' random blocks.", range=NON_NEGATIVE)

    def __post_init__(self):
        check(self)


@dataclass
class SliceOptions:
    """`colm slice`'s options (colm_core/surgery.py runs them)."""

    chains: int = option(REQUIRED, "Keep chains 1..K: the K-chain sub-model.", range=AT_LEAST_ONE)

    def __post_init__(self):
        check(self)


EVAL_SEQ_LEN = 256  # tokens per evaluation window, unless given
TASK_OPTIONS = ("tasks", "num_fewshot", "limit", "include_path")


@dataclass
class EvalOptions:
    """`colm eval`'s options: text evaluation (colm_core/evaluate.py) or, with tasks, lm-evaluation-harness
    tasks (colm_core/lm_eval_adapter.py); the options of one do not apply to the other."""

    data: list[str] | None = option(
        None,
        "Text file, directory or glob (repeat for more); default: the part of the embedded corpus that "
        "`colm train` holds out for validation.",
    )
    chains: list[int] | None = option(None, "Chain counts to evaluate, e.g. 1,2,4 (default: all).", example="1,2,4")
    seq_len: int | None = option(None, f"Tokens per evaluation window (default: {EVAL_SEQ_LEN}).", range=AT_LEAST_ONE)
    batch_size: int = option(
        8, "Windows per forward pass (with --tasks: requests per forward pass).", range=AT_LEAST_ONE
    )
    max_tokens: int | None = option(None, "Evaluate at most this many tokens.", range=AT_LEAST_ONE)
    tasks: str | None = option(
        None,
        "lm-evaluation-harness tasks, comma-separated, e.g. hellaswag,arc_easy: score every chain count "
        "on them instead of on text (needs pip install 'colm[eval]').",
    )
    num_fewshot: int | None = option(None, "Few-shot examples per task (default: each task's own).", range=NON_NEGATIVE)
    limit: int | None = option(None, "Evaluate at most this many documents per task.", range=AT_LEAST_ONE)
    include_path: Path | None = option(None, "Directory of your own task YAML files (lm-eval's --include_path).")

    def __post_init__(self):
        check(self)
        if self.tasks is None:
            given = [name for name in TASK_OPTIONS if getattr(self, name) is not None]
            if given:
                raise OptionError(
                    f"{{{given[0]}}} applies to lm-eval tasks; give {{tasks}} too, e.g. {{tasks}} hellaswag"
                )
        else:
            given = [name for name in ("data", "max_tokens", "seq_len") if getattr(self, name)]
            if given:
                raise OptionError(
                    f"{{{given[0]}}} applies to text evaluation, not to {{tasks}} (a task's requests "
                    "use the model's context); give one of them"
                )


@dataclass
class GenerateOptions:
    """`colm generate`'s options, which colm_core.generation.generate takes: the sub-model, the sampler and
    when to stop."""

    chains: int | None = option(None, "Chains of the sub-model that generates (default: all).", range=AT_LEAST_ONE)
    max_new_tokens: int = option(128, "Generate at most this many tokens.", range=AT_LEAST_ONE)
    temperature: float = option(0.0, "Sampling temperature; 0 is greedy.", range=NON_NEGATIVE)
    top_k: int | None = option(
        None, "Sample among the k most likely tokens (needs --temperature > 0).", range=AT_LEAST_ONE
    )
    top_p: float | None = option(
        None, "Sample among the most likely tokens of mass p (needs --temperature > 0).", range=TOP_P
    )
    seed: int = option(0, "Seed of the sampler.", range=NON_NEGATIVE)
    stop: list[str] | None = option(None, "Stop when the text contains this (repeatable).")
    switch: str | None = option(None, "Change the chain count at generated positions, e.g. 0:4,32:1,64:2.")
    prefill_chains: int | None = option(
        None, "Chains that build the prompt's KV cache (default: 1 for CoLM-Air, else --chains).", range=AT_LEAST_ONE
    )

    def __post_init__(self):
        check(self)
        restricted = [name for name in ("top_k", "top_p") if getattr(self, name) is not None]
        if restricted and self.temperature == 0:
            raise OptionError(
                " and ".join(f"{{{name}}} {{{name}_value:g}}" for name in restricted)
                + " has no effect at temperature 0 (greedy decoding); give {temperature} above 0 to "
                "sample, or leave it out",
                top_k_value=self.top_k,
                top_p_value=self.top_p,
            )


@dataclass
class ServeOptions:
    """`colm serve`'s options: where it listens, who may ask, and how much work it takes on
    (colm_cli/serve.py and colm_core/serving.py run them)."""

    host: str = option("127.0.0.1", "Address to listen on; 0.0.0.0 exposes the server to the network.")
    port: int = option(
        8000, "Port to listen on; 0 picks a free one (the URL is printed on stdout).", range=NON_NEGATIVE
    )
    name: str | None = option(
        None, "Model name clients ask for (default: the checkpoint directory's name); NAME@k is the k-chain sub-model."
    )
    api_key: str | None = option(
        None,
        "Require `Authorization: Bearer KEY`; prefer COLM_API_KEY in the environment, which ps does not show.",
        envvar="COLM_API_KEY",
    )
    elastic: bool = option(
        False,
        "Serve NAME@auto: the largest chain count whose expected queue wait stays under --max-wait-ms.",
        negatable=False,
    )
    max_wait_ms: float = option(500.0, "The queue wait NAME@auto keeps under (with --elastic).", range=POSITIVE)
    max_prompt_tokens: int | None = option(
        None, "Longest prompt accepted (default: the model's context).", range=AT_LEAST_ONE
    )
    max_tokens: int = option(512, "Largest max_tokens a request may ask for.", range=AT_LEAST_ONE)
    max_body_bytes: int = option(1 << 20, "Largest request body.", range=AT_LEAST_ONE)
    max_concurrent: int = option(
        64, "Prompts queued or running at once; more are refused with 429.", range=AT_LEAST_ONE
    )
    max_batch: int = option(16, "Prompts per decode step; more wait in the queue.", range=AT_LEAST_ONE)

    def __post_init__(self):
        check(self)


@dataclass
class InspectOptions:
    """`colm inspect`'s options (colm_core/inspect.py describes the checkpoint)."""

    json: bool = option(False, "Print JSON on stdout.", negatable=False)
    verify: bool = option(
        False,
        "Re-hash the files and compare them with the sha256 digests recorded when the "
        "checkpoint was written; exit 1 naming the first that differs or that has none.",
        negatable=False,
    )


@dataclass
class ExportOptions:
    """`colm export`'s options (colm_core/export.py writes the directory)."""

    format: str = option(
        REQUIRED,
        "hf-llama: a standard LlamaForCausalLM (1-chain models); hf: any CoLM, loaded with trust_remote_code=True.",
    )


@dataclass
class PullOptions:
    """`colm pull`'s options (colm_core/hub.py downloads)."""

    revision: str | None = option(None, "Branch, tag or commit (default: main).")


@dataclass
class PushOptions:
    """`colm push`'s options (colm_core/hub.py uploads)."""

    private: bool = option(False, "Create the repo private (if it does not exist).", negatable=False)
    revision: str | None = option(None, "Branch to push to (created if missing; default: main).")
    license: str | None = option(None, "License id for the card, e.g. apache-2.0.")
