"""`colm inspect`: what a checkpoint holds, read from its headers (no weights are loaded unless
`verify` re-hashes the files against the digests recorded when they were written)."""

from __future__ import annotations

from pathlib import Path

from colm_core.card import parameters_per_chain
from colm_core.checkpoint import open_checkpoint, verify_digests


def describe(path: Path, verify: bool = False) -> dict:
    """The report; with `verify`, every recorded file is re-hashed first and a mismatch raises."""
    ckpt = open_checkpoint(path)
    if verify:
        verify_digests(ckpt)
    cfg = ckpt.config
    per_chain = parameters_per_chain(cfg)
    chains, running = [], 0
    for i, n in enumerate(per_chain):
        running += n
        chains.append({"chain": i + 1, "heads": cfg.heads[i], "kv_heads": cfg.kv_heads[i], "ffn": cfg.ffn[i],
                       "width": cfg.chain_widths[i], "parameters": n, "submodel_parameters": running})
    from colm_core.checkpoint import expected_shapes

    return {
        "path": str(ckpt.path),
        "parameters": sum(per_chain),
        "dtype": str(ckpt.dtype).removeprefix("torch."),
        "chains": chains,
        "config": cfg.to_dict(),
        "files": sorted(set(ckpt.weight_map.values())),
        "shapes": {name: list(shape) for name, shape in expected_shapes(cfg).items()},
        "history": ckpt.history,
        "digests": ckpt.digests,
        "verified": verify,
    }
