"""Turn what a user typed for a checkpoint into a local colm checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from colm_core.errors import ColmError


def resolve_checkpoint(spec: str | Path) -> Path:
    path = Path(spec)
    if not path.exists():
        raise ColmError(f"{spec}: no such checkpoint; check the path (create one with `colm init`)")
    return path
