"""ColmConfig: the shape of a CoLM, its validation, and config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from colm_core.errors import ColmError

FORMAT_VERSION = 1
# File names a colm checkpoint shares with a Hugging Face model directory (safetensors layout).
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
INIT_STD = 0.02  # standard deviation of initial weights: Llama's initializer_range (the paper gives none)
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def read_json(path: Path, fix: str):
    """The JSON value in a file colm reads (config, index, history, digests, tokenizer config).

    Whatever the file holds, the answer is its value or a ColmError naming the file and `fix`: bytes
    that are not UTF-8, nesting deep enough to exhaust the parser's recursion, a read error (a
    symlink into /proc). Only regular files are read: a FIFO would block and /dev/zero never ends."""
    path = Path(path)
    if not path.is_file():
        raise ColmError(f"{path} is missing or not a regular file; {fix}")
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ColmError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]}); {fix}") from None


MAX_SIZE = 2**31  # any one size or id; a tensor's elements must also count below 2**62 (validate)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_SIZE


def is_finite_number(value) -> bool:
    """An int that converts to a float (JSON holds 10**400 too), or a finite float."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and abs(value) < 2**63
        or isinstance(value, float)
        and math.isfinite(value)
    )


def value_check(kind) -> tuple[Callable[[object], bool], str]:
    """What a field of type `kind` admits in a config.json (JSON types; a bool is no int here), and how
    to say it. Driven by the type itself, so a new field of any supported type is checked too."""
    if types.NoneType in typing.get_args(kind):  # X | None
        (inner,) = [a for a in typing.get_args(kind) if a is not types.NoneType]
        check, name = value_check(inner)
        return (lambda v: v is None or check(v)), f"{name} or null"
    if kind is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if kind is int:
        return is_int, "an integer below 2**31"
    if kind is float:
        return is_finite_number, "a finite number"
    if kind is str:
        return (lambda v: isinstance(v, str)), "a string"
    if kind == list[int]:
        return (lambda v: isinstance(v, list) and all(is_int(x) for x in v)), "a list of integers below 2**31"
    if kind is dict:
        return (
            lambda v: isinstance(v, dict) and all(is_finite_number(x) or isinstance(x, str) for x in v.values()),
            "an object of numbers",
        )
    raise TypeError(f"no config.json check for a field of type {kind}; add one to value_check")


@dataclass
class ColmConfig:
    """Per-chain sizes are explicit lists, one entry per chain (docs/spec.md section 1).

    Chain i has heads[i] query heads (width heads[i] * head_dim), kv_heads[i] key/value
    heads and ffn[i] SwiGLU hidden units. With kv_share (CoLM-Air) only chain 1 has
    key/value heads (kv_heads[1:] are 0) and every query head reads them.
    """

    vocab_size: int = 258
    n_layers: int = 4
    head_dim: int = 32
    heads: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    kv_heads: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    ffn: list[int] = field(default_factory=lambda: [176, 176, 176, 176])
    kv_share: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama-3 style: LLAMA3_ROPE_KEYS
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tokenizer: str = "byte"  # "byte" (built in) or "tokenizer.json" (stored beside config.json)

    # --- derived sizes -------------------------------------------------------------

    @property
    def n_chains(self) -> int:
        return len(self.heads)

    @property
    def chain_widths(self) -> list[int]:
        """Hidden width owned by each chain."""
        return [h * self.head_dim for h in self.heads]

    def hidden_size(self, chains: int | None = None) -> int:
        return sum(self.chain_widths[: chains or self.n_chains])

    @property
    def kv_widths(self) -> list[int]:
        """Key (and value) projection width owned by each chain; Air: chain 1 only."""
        n_kv_chains = 1 if self.kv_share else self.n_chains
        return [k * self.head_dim for k in self.kv_heads[:n_kv_chains]]

    # --- validation ------------------------------------------------------------------

    def validate(self) -> ColmConfig:
        def bad(msg: str) -> ColmError:
            return ColmError(f"invalid config: {msg}")

        for name, kind in typing.get_type_hints(type(self)).items():  # before any check below compares a value
            check, admits = value_check(kind)
            if not check(getattr(self, name)):
                raise bad(f"{name} must be {admits}, got {getattr(self, name)!r}")
        n = len(self.heads)
        if n < 1:
            raise bad("heads: at least one chain is needed")
        for name in ("kv_heads", "ffn"):
            if len(getattr(self, name)) != n:
                raise bad(f"{name}: {len(getattr(self, name))} entries for {n} chains; give one per chain")
        for name in ("vocab_size", "n_layers", "head_dim", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        widest = max(self.vocab_size, sum(self.ffn), self.hidden_size())
        if self.hidden_size() * widest >= 2**62:  # beyond what torch can size, let alone allocate
            raise bad(f"these sizes make tensors of {self.hidden_size() * widest:,} elements; choose smaller ones")
        if self.head_dim % 2:
            raise bad(f"head_dim must be even for RoPE, got {self.head_dim}")
        for i, (h, kv, f) in enumerate(zip(self.heads, self.kv_heads, self.ffn), start=1):
            if h < 1:
                raise bad(f"chain {i}: needs at least 1 query head, got {h}")
            if f < 1:
                raise bad(f"chain {i}: needs at least 1 FFN unit, got {f}")
            if self.kv_share:
                if i == 1 and kv < 1:
                    raise bad("chain 1: CoLM-Air needs at least 1 KV head in chain 1")
                if i > 1 and kv != 0:
                    raise bad(f"chain {i}: CoLM-Air shares chain 1's KV heads, so kv_heads must be 0, got {kv}")
                if h % self.kv_heads[0]:
                    raise bad(
                        f"chain {i}: {h} query heads is not a multiple of chain 1's {self.kv_heads[0]} shared KV heads"
                    )
            else:
                if kv < 1:
                    raise bad(f"chain {i}: needs at least 1 KV head, got {kv}")
                if h % kv:
                    raise bad(f"chain {i}: {h} query heads is not a multiple of {kv} KV heads")
        if self.rope_theta <= 0:
            raise bad(f"rope_theta must be positive, got {self.rope_theta}")
        if self.rope_scaling is not None:
            missing = [k for k in LLAMA3_ROPE_KEYS if k not in self.rope_scaling]
            extra = sorted(set(self.rope_scaling) - set(LLAMA3_ROPE_KEYS) - {"rope_type"})
            if missing or extra:
                raise bad(
                    f"rope_scaling needs exactly {', '.join(LLAMA3_ROPE_KEYS)} (Llama-3 style); "
                    f"missing {missing}, unknown {extra}"
                )
        if self.norm_eps <= 0:
            raise bad(f"norm_eps must be positive, got {self.norm_eps}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tok = getattr(self, name)
            if tok is not None and not 0 <= tok < self.vocab_size:
                raise bad(f"{name} {tok} is outside the vocabulary 0..{self.vocab_size - 1}")
        if self.tokenizer not in ("byte", "tokenizer.json"):
            raise bad(f"tokenizer must be 'byte' or 'tokenizer.json', got {self.tokenizer!r}")
        return self

    # --- (de)serialisation -------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"colm_format": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ColmConfig:
        data = dict(data)
        version = data.pop("colm_format", None)
        if version != FORMAT_VERSION:
            raise ColmError(
                f"{source}: colm_format is {version!r}, this colm reads format {FORMAT_VERSION}; "
                "is this a colm checkpoint? (use `colm import` for a Hugging Face Llama)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ColmError(
                f"{source}: unknown field {unknown[0]!r}; remove it (known fields: {', '.join(sorted(known))})"
            )
        try:
            cfg = cls(**data)
        except TypeError as e:
            raise ColmError(f"{source}: {e}") from None
        return cfg.validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> ColmConfig:
        data = read_json(
            path, "restore the file or re-create the checkpoint (a colm checkpoint directory holds config.json)"
        )
        if not isinstance(data, dict):
            raise ColmError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes) -> ColmConfig:
        return dataclasses.replace(self, **changes).validate()


PRESETS: dict[str, ColmConfig] = {
    # Trains to a visibly falling loss in minutes on 2 CPU cores (~2M parameters).
    "tiny": ColmConfig(
        vocab_size=258,
        n_layers=4,
        head_dim=32,
        heads=[2, 2, 2, 2],
        kv_heads=[1, 1, 1, 1],
        ffn=[176] * 4,
        max_seq_len=1024,
        bos_token_id=256,
        eos_token_id=257,
    ),
    # A few tens of millions of parameters: benchmarks and short experiments.
    "small": ColmConfig(
        vocab_size=258,
        n_layers=8,
        head_dim=64,
        heads=[2, 2, 2, 2],
        kv_heads=[1, 1, 1, 1],
        ffn=[352] * 4,
        max_seq_len=2048,
        bos_token_id=256,
        eos_token_id=257,
    ),
    # Llama-3.2-1B's shape cut into 4 equal chains: for scale tests of surgery and I/O.
    "llama-1b": ColmConfig(
        vocab_size=128256,
        n_layers=16,
        head_dim=64,
        heads=[8, 8, 8, 8],
        kv_heads=[2, 2, 2, 2],
        ffn=[2048] * 4,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        norm_eps=1e-5,
        tie_embeddings=True,
        max_seq_len=131072,
        bos_token_id=256,
        eos_token_id=257,
    ),
}
