"""The Python entry points `colm_core.load` and `colm_core.save`: a model from anything a command accepts.

The top of colm_core: `load` resolves its input as every command does (a checkpoint directory, a
Hugging Face directory, imported once into the cache, or `hf://ORG/NAME[@REVISION]`), so it sits
above colm_core.resolve; colm_core.checkpoint.load reads a checkpoint directory only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from colm_core.checkpoint import load as load_checkpoint
from colm_core.checkpoint import save
from colm_core.resolve import resolve_checkpoint

__all__ = ["load", "save"]


def load(source: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A CoLM in eval mode (with .config, .tokenizer and .history) from a checkpoint directory, a Hugging
    Face directory or an `hf://ORG/NAME[@REVISION]` reference."""
    return load_checkpoint(resolve_checkpoint(source), device=device, dtype=dtype).eval()
