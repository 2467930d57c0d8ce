"""`colm inspect`: what a checkpoint holds, read from its headers (no weights are loaded).

A Hugging Face directory (a Llama, or a `colm export --format hf`) is described in place as the
checkpoint it would import as: nothing is copied into the cache."""

from __future__ import annotations

from pathlib import Path

from colm_core.card import parameters_per_chain
from colm_core.checkpoint import open_checkpoint
from colm_core.llama import is_hf_model_dir, open_hf_dir, source_names, weights_dtype
from colm_core.model import expected_shapes


def describe(path: Path) -> dict:
    if is_hf_model_dir(path):
        src = open_hf_dir(path)
        source_names(src)  # every tensor the config implies is there, and no other
        cfg, dtype, files, history = src.config, weights_dtype(src), src.files, src.history()
    else:
        ckpt = open_checkpoint(path)
        cfg, dtype, files, history = ckpt.config, ckpt.dtype, ckpt.files, ckpt.history
    per_chain = parameters_per_chain(cfg)
    chains, running = [], 0
    for i, n in enumerate(per_chain):
        running += n
        chains.append({"chain": i + 1, "heads": cfg.heads[i], "kv_heads": cfg.kv_heads[i], "ffn": cfg.ffn[i],
                       "width": cfg.chain_widths[i], "parameters": n, "submodel_parameters": running})
    return {
        "path": str(path),
        "parameters": sum(per_chain),
        "dtype": str(dtype).removeprefix("torch."),
        "chains": chains,
        "config": cfg.to_dict(),
        "files": [f.name for f in files],
        "shapes": {name: list(shape) for name, shape in expected_shapes(cfg).items()},
        "history": history,
    }
