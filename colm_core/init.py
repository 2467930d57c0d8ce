"""`colm init`: a config from a preset plus overrides, and a freshly initialised model."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from colm_core.config import INIT_STD, PRESETS, ColmConfig
from colm_core.errors import ColmError, OptionError
from colm_core.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check, option
from colm_core.tokenizer import TOKENIZER_FILE, ByteTokenizer, HFTokenizer

MAX_CHAINS = 4096  # far more than any model has; a bound that keeps the per-chain lists small


@dataclass
class InitOptions:
    """`colm init`'s options: each field is a flag (colm_cli builds them); unset ones come from the preset."""

    preset: str = option(
        "tiny",
        "Starting shape: tiny (trains in minutes on 2 CPU cores), small, or llama-1b "
        "(Llama-3.2-1B's shape in 4 chains).",
        choices=tuple(PRESETS),
    )
    chains: int | None = option(
        None,
        "Number of chains, each with the preset's query heads per chain.",
        range=AT_LEAST_ONE,
        hint="query heads per chain are given with {heads} {value}",
    )
    heads: list[int] | None = option(
        None, "Query heads per chain, e.g. 4,4,4,4 for 4 chains of 4 heads.", range=AT_LEAST_ONE, example="4,4,4,4"
    )
    kv_heads: list[int] | None = option(
        None, "KV heads per chain (one number for all).", range=NON_NEGATIVE, example="2,2,2,2"
    )
    ffn: list[int] | None = option(
        None, "FFN units per chain (one number for all).", range=AT_LEAST_ONE, example="512,512"
    )
    n_layers: int | None = option(None, "Number of layers.", range=AT_LEAST_ONE, flag="layers")
    head_dim: int | None = option(None, "Width of every attention head.", range=AT_LEAST_ONE)
    vocab_size: int | None = option(None, "Vocabulary size (default: the tokenizer's).", range=AT_LEAST_ONE)
    air: bool = option(False, "CoLM-Air: keys/values from chain 1, shared by all.")
    rope_theta: float | None = option(None, "RoPE base.", range=POSITIVE)
    rope_scaling: list[float] | None = option(
        None,
        "Llama-3 RoPE scaling as FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,ORIGINAL_MAX_POSITIONS.",
        range=POSITIVE,
        example="32,1,4,8192",
    )
    norm_eps: float | None = option(None, "RMSNorm epsilon.", range=POSITIVE)
    tie_embeddings: bool | None = option(None, "Share embedding and LM-head blocks.")
    max_seq_len: int | None = option(None, "Longest sequence the model accepts.", range=AT_LEAST_ONE)
    tokenizer: Path | None = option(
        None, "A Hugging Face tokenizer.json to store in the model (default: built-in bytes)."
    )
    bos_token_id: int | None = option(None, "Beginning-of-sequence token id.", range=NON_NEGATIVE)
    eos_token_id: int | None = option(None, "End-of-sequence token id.", range=NON_NEGATIVE)
    pad_token_id: int | None = option(None, "Padding token id.", range=NON_NEGATIVE)
    seed: int = option(0, "Seed of the random initialisation.", range=NON_NEGATIVE)
    init_std: float = option(INIT_STD, "Standard deviation of the initial weights.", range=POSITIVE)

    def __post_init__(self):
        check(self)

    def as_record(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _per_chain(values: list[int] | None, n: int, default: list[int], name: str) -> list[int]:
    if values is None:
        return default
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise OptionError(
            "{" + name + "} has {count} entries for {n} chains; give one per chain or a single number",
            count=len(values),
            n=n,
        )
    return values


def build_config(o: InitOptions) -> tuple[ColmConfig, object]:
    """The config and tokenizer that the options describe; defaults come from the preset."""
    base = PRESETS[o.preset]
    heads = o.heads or base.heads
    if o.chains is not None and o.chains > MAX_CHAINS:  # before lists of that length are made
        raise OptionError("{chains} {value}: at most {most} chains", value=o.chains, most=MAX_CHAINS)
    if o.chains is not None:  # N chains of the given heads (one number) or of the preset's per-chain heads
        if o.heads is not None and len(o.heads) not in (1, o.chains):
            raise ColmError(
                f"--chains {o.chains} and --heads {','.join(map(str, o.heads))} disagree; give one "
                f"number of heads per chain ({o.chains}), a single number, or leave out --chains"
            )
        heads = (heads[:1] * o.chains) if len(heads) != o.chains else heads
    n = len(heads)

    # Defaults scale with each chain's heads, keeping the preset's KV grouping and FFN/head ratio.
    def default_kv(h: int) -> int:
        kv = max(1, base.kv_heads[0] * h // base.heads[0])
        return kv if h % kv == 0 else h

    kv_heads = _per_chain(o.kv_heads, n, [default_kv(h) for h in heads], "kv_heads")
    if o.air and (o.kv_heads is None or len(o.kv_heads) == 1):  # Air: only chain 1 has KV heads
        kv_heads = [kv_heads[0]] + [0] * (n - 1)
    ffn_default = [base.ffn[0] * h // base.heads[0] for h in heads]

    if o.tokenizer is not None:
        if not Path(o.tokenizer).is_file():
            raise OptionError(
                "{tokenizer} {value}: no such file; pass a Hugging Face tokenizer.json", value=o.tokenizer
            )
        tokenizer = HFTokenizer(Path(o.tokenizer))
        tok_kind, vocab = TOKENIZER_FILE, tokenizer.vocab_size
        bos, eos = o.bos_token_id, o.eos_token_id
    else:
        tokenizer = ByteTokenizer()
        tok_kind, vocab = "byte", max(base.vocab_size, ByteTokenizer.vocab_size)
        bos = ByteTokenizer.bos_id if o.bos_token_id is None else o.bos_token_id
        eos = ByteTokenizer.eos_id if o.eos_token_id is None else o.eos_token_id
    if o.rope_scaling is not None and len(o.rope_scaling) != 4:
        raise ColmError(
            f"--rope-scaling needs 4 numbers FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,ORIGINAL_MAX_POSITIONS, "
            f"e.g. 32,1,4,8192; got {len(o.rope_scaling)}"
        )
    scaling = (
        None
        if o.rope_scaling is None
        else dict(
            zip(
                ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                [*o.rope_scaling[:3], int(o.rope_scaling[3])],
            )
        )
    )
    pick = lambda value, default: default if value is None else value  # noqa: E731
    cfg = ColmConfig(
        vocab_size=pick(o.vocab_size, vocab),
        n_layers=pick(o.n_layers, base.n_layers),
        head_dim=pick(o.head_dim, base.head_dim),
        heads=heads,
        kv_heads=kv_heads,
        ffn=_per_chain(o.ffn, n, ffn_default, "ffn"),
        kv_share=o.air,
        rope_theta=pick(o.rope_theta, base.rope_theta),
        rope_scaling=pick(scaling, base.rope_scaling),
        norm_eps=pick(o.norm_eps, base.norm_eps),
        tie_embeddings=pick(o.tie_embeddings, base.tie_embeddings),
        max_seq_len=pick(o.max_seq_len, base.max_seq_len),
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=o.pad_token_id,
        tokenizer=tok_kind,
    ).validate()
    if cfg.vocab_size < tokenizer.vocab_size:
        raise OptionError(
            "{vocab_size} {value} is smaller than the tokenizer's {tokens} tokens",
            value=cfg.vocab_size,
            tokens=tokenizer.vocab_size,
        )
    return cfg, tokenizer


def check_fits_in_memory(cfg: ColmConfig) -> None:
    """Refuse, before allocating, a model whose float32 weights exceed this machine's memory (counted
    from above: every attention projection as wide as the hidden state)."""
    hidden = cfg.hidden_size()
    parameters = cfg.n_layers * (4 * hidden * hidden + 3 * hidden * sum(cfg.ffn)) + 2 * cfg.vocab_size * hidden
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if parameters * 4 > memory:
        raise ColmError(
            f"these sizes make a model of {parameters:,} parameters, {parameters * 4 / 2**30:,.1f} GiB "
            f"in float32: more than this machine's {memory / 2**30:.0f} GiB of memory; choose smaller sizes"
        )


def init_model(o: InitOptions):
    from colm_core.model import CoLM

    cfg, tokenizer = build_config(o)
    check_fits_in_memory(cfg)
    return CoLM(cfg, tokenizer).init_weights(std=o.init_std, seed=o.seed)
