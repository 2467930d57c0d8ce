"""Chain expansion and slicing (docs/spec.md section 5): list work over a checkpoint's tensors.

Every tensor belongs to one chain and a chain's blocks only read earlier chains, so a kept
chain's tensors never change: slicing drops the trailing chains' tensors, expanding appends new
ones. Both stream tensor by tensor from the input's safetensors files into `write_checkpoint`,
holding at most one output shard and one tensor, never the whole model.

New blocks follow `CoLM.init_weights` (N(0, std), std/sqrt(2 * layers) for the projections that
write into the residual stream, norm gains one) except the LM head: its new blocks are zero, so
the expanded model's logits equal the input's exactly. With tied embeddings the head block is the
embedding block, so new embedding blocks are zero too (the new chains then start from the old
chains' attention and FFN outputs instead of their own token embedding).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from colm_core.checkpoint import (
    Checkpoint,
    StoredTensor,
    atomic_directory,
    expected_shapes,
    history_entry,
    open_checkpoint,
    write_checkpoint,
)
from colm_core.config import ColmConfig
from colm_core.errors import ColmError, OptionError
from colm_core.model import chain_of, initial_value
from colm_core.options import ExpandOptions

# --- configs -------------------------------------------------------------------------------


def expand_config(
    cfg: ColmConfig,
    add_chains: int,
    heads: int | None = None,
    kv_heads: int | None = None,
    ffn: int | None = None,
    air: bool = False,
) -> ColmConfig:
    """The config with `add_chains` chains appended; sizes default to the last chain's."""
    if add_chains < 1:
        raise OptionError("{add_chains} {value}: add at least 1 chain", value=add_chains)
    kv_share = cfg.kv_share or air
    if air and not cfg.kv_share and cfg.n_chains > 1:
        raise ColmError(
            f"--air: this model has {cfg.n_chains} chains with their own KV heads; only a 1-chain "
            "model can become CoLM-Air (slice to 1 chain first: colm slice --chains 1)"
        )
    heads = cfg.heads[-1] if heads is None else heads
    if kv_share:
        if kv_heads not in (None, 0):
            raise ColmError(
                f"--kv-heads {kv_heads}: CoLM-Air chains after the first share chain 1's KV heads; omit --kv-heads"
            )
        if heads % cfg.kv_heads[0]:
            raise ColmError(
                f"--heads {heads}: CoLM-Air needs the query heads of every chain to be a multiple of "
                f"chain 1's {cfg.kv_heads[0]} shared KV heads"
            )
        kv_heads = 0
    else:
        kv_heads = cfg.kv_heads[-1] if kv_heads is None else kv_heads
        if kv_heads < 1 or heads % kv_heads:
            raise ColmError(
                f"--heads {heads} --kv-heads {kv_heads}: each new chain's query heads must be a "
                "positive multiple of its KV heads (GQA)"
            )
    ffn = cfg.ffn[-1] if ffn is None else ffn
    if heads < 1 or ffn < 1:
        raise OptionError("{heads} {h} {ffn} {f}: new chains need at least 1 query head and 1 FFN unit", h=heads, f=ffn)
    return cfg.replace(
        heads=cfg.heads + [heads] * add_chains,
        kv_heads=cfg.kv_heads + [kv_heads] * add_chains,
        ffn=cfg.ffn + [ffn] * add_chains,
        kv_share=kv_share,
    )


def slice_config(cfg: ColmConfig, chains: int) -> ColmConfig:
    """The config of the first `chains` chains."""
    n = cfg.n_chains
    if not 1 <= chains <= n:
        raise OptionError("{chains} {value} is outside 1..{n}: this model has {n} chains", value=chains, n=n)
    return cfg.replace(heads=cfg.heads[:chains], kv_heads=cfg.kv_heads[:chains], ffn=cfg.ffn[:chains])


# --- tensors -------------------------------------------------------------------------------


def new_block(
    name: str, shape: tuple[int, ...], cfg: ColmConfig, std: float, seed: int, dtype: torch.dtype
) -> torch.Tensor:
    """The initial value of a new chain's tensor; seeded by (seed, name) so order does not matter."""
    if name.startswith("lm_head.") or (cfg.tie_embeddings and name.startswith("embed.")):
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))  # CPU generators use 32 bits
    return initial_value(name, shape, std, cfg.n_layers, g).to(dtype)


def expanded_tensors(
    ckpt: Checkpoint, cfg: ColmConfig, std: float, seed: int
) -> Iterator[tuple[str, torch.Tensor | StoredTensor]]:
    """Every tensor in the model's order, one at a time: the input's unchanged, the new chains' fresh."""
    shapes = expected_shapes(cfg)
    old = ckpt.stored([name for name in shapes if name in ckpt.weight_map])  # in the same order
    for name, shape in shapes.items():
        yield next(old) if name in ckpt.weight_map else (name, new_block(name, shape, cfg, std, seed, ckpt.dtype))


def sliced_tensors(ckpt: Checkpoint, chains: int) -> Iterator[tuple[str, StoredTensor]]:
    """The kept chains' tensors in the model's order (the order `save` writes), one at a time."""
    return ckpt.stored([name for name in expected_shapes(ckpt.config) if chain_of(name) <= chains])


# --- commands ------------------------------------------------------------------------------


def expand(
    path: Path,
    out: Path,
    *,
    add_chains: int = ExpandOptions.add_chains,
    heads: int | None = ExpandOptions.heads,
    kv_heads: int | None = ExpandOptions.kv_heads,
    ffn: int | None = ExpandOptions.ffn,
    air: bool = ExpandOptions.air,
    init_std: float = ExpandOptions.init_std,
    seed: int = ExpandOptions.seed,
    verify: bool = True,
    force: bool = False,
) -> dict:
    """Write `path` with `add_chains` new chains to `out`; returns the verification report (or {})."""
    from colm_core.verify import verify_expand

    if not init_std > 0:
        raise OptionError("{init_std} must be positive, got {value}", value=init_std)
    ckpt = open_checkpoint(path)
    cfg = expand_config(ckpt.config, add_chains, heads, kv_heads, ffn, air)
    args = dict(add_chains=add_chains, heads=heads, kv_heads=kv_heads, ffn=ffn, air=air, init_std=init_std, seed=seed)
    with atomic_directory(out, force, inputs=[path]) as tmp:
        history = ckpt.history + [history_entry("expand", args, inputs=[ckpt])]
        write_checkpoint(tmp, cfg, expanded_tensors(ckpt, cfg, init_std, seed), ckpt.tokenizer(), history)
        return verify_expand(ckpt.path, tmp) if verify else {}


def slice_(path: Path, out: Path, *, chains: int, verify: bool = True, force: bool = False) -> dict:
    """Write the first `chains` chains of `path` to `out`; returns the verification report (or {})."""
    from colm_core.verify import verify_slice

    ckpt = open_checkpoint(path)
    cfg = slice_config(ckpt.config, chains)
    with atomic_directory(out, force, inputs=[path]) as tmp:
        history = ckpt.history + [history_entry("slice", dict(chains=chains), inputs=[ckpt])]
        write_checkpoint(tmp, cfg, sliced_tensors(ckpt, chains), ckpt.tokenizer(), history)
        return verify_slice(ckpt.path, tmp, chains) if verify else {}
