"""Turn what a user typed for a checkpoint into a local colm checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from colm_core.errors import ColmError

HF_SCHEME = "hf://"


def resolve_checkpoint(spec: str | Path) -> Path:
    if isinstance(spec, str) and spec.startswith(HF_SCHEME):
        spec = resolve_hub_reference(spec)
    path = Path(spec)
    if not path.exists():
        raise ColmError(f"{spec}: no such checkpoint; check the path (create one with `colm init`)")
    return path


def resolve_hub_reference(spec: str) -> Path:
    """hf://ORG/NAME[@REVISION] -> its snapshot directory in the Hugging Face cache (downloaded if online)."""
    from colm_core.hub import resolve

    return resolve(spec)
