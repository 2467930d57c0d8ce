"""`colm inspect`: what a checkpoint holds, read from its headers (no weights are loaded unless
`verify` re-hashes the files against the digests recorded when they were written).

A Hugging Face directory (a Llama, or a `colm export --format hf`) or a GGUF file is described in
place as the checkpoint it would import as: nothing is copied into the cache."""

from __future__ import annotations

from pathlib import Path

from colm_core.card import parameters_per_chain
from colm_core.checkpoint import open_checkpoint, verify_digests
from colm_core.errors import ColmError
from colm_core.gguf import is_gguf_file, open_gguf
from colm_core.llama import is_hf_model_dir, open_hf_dir, source_names, weights_dtype
from colm_core.model import expected_shapes


def describe(path: Path, verify: bool = False) -> dict:
    """The report; with `verify`, every recorded file is re-hashed first and a mismatch raises."""
    if is_hf_model_dir(path):
        if verify:
            raise ColmError(f"{path} is a Hugging Face directory, which records no digests to verify; omit --verify")
        src = open_hf_dir(path)
        source_names(src)  # every tensor the config implies is there, and no other
        cfg, dtype, files, history, digests = src.config, weights_dtype(src), src.files, src.history(), {}
    elif is_gguf_file(path):
        if verify:
            raise ColmError(f"{path} is a GGUF file, which records no digests to verify; omit --verify")
        src = open_gguf(path)
        cfg, dtype, files, history, digests = src.config, "float32", src.files, [], {}  # as it imports
    else:
        ckpt = open_checkpoint(path)
        if verify:
            verify_digests(ckpt)
        cfg, dtype, files, history, digests = ckpt.config, ckpt.dtype, ckpt.files, ckpt.history, ckpt.digests
    per_chain = parameters_per_chain(cfg)
    chains, running = [], 0
    for i, n in enumerate(per_chain):
        running += n
        chains.append(
            {
                "chain": i + 1,
                "heads": cfg.heads[i],
                "kv_heads": cfg.kv_heads[i],
                "ffn": cfg.ffn[i],
                "width": cfg.chain_widths[i],
                "parameters": n,
                "submodel_parameters": running,
            }
        )
    return {
        "path": str(path),
        "parameters": sum(per_chain),
        "dtype": str(dtype).removeprefix("torch."),
        "chains": chains,
        "config": cfg.to_dict(),
        "files": [f.name for f in files],
        "shapes": {name: list(shape) for name, shape in expected_shapes(cfg).items()},
        "history": history,
        "digests": digests,
        "verified": verify,
    }
