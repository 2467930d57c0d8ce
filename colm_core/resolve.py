"""Turn what a user typed for a checkpoint into a local colm checkpoint directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

from colm_core.cache import cache_root
from colm_core.errors import ColmError

HF_SCHEME = "hf://"


def resolve_checkpoint(spec: str | Path) -> Path:
    if isinstance(spec, str) and spec.startswith(HF_SCHEME):
        spec = resolve_hub_reference(spec)
    path = Path(spec)
    if not path.exists():
        raise ColmError(f"{spec}: no such checkpoint; check the path (create one with `colm init`)")
    from colm_core.llama import is_hf_model_dir

    if is_hf_model_dir(path):
        return imported_hf_llama(path)
    return path


def resolve_hub_reference(spec: str) -> Path:
    """hf://ORG/NAME[@REVISION] -> its snapshot directory in the Hugging Face cache (downloaded if online)."""
    from colm_core.hub import resolve

    return resolve(spec)


def output_base(path: Path) -> Path:
    """What a derived output name starts from: the input itself, or for an input that resolved into a
    cache (an imported Hugging Face directory, a Hub snapshot) its name in the working directory."""
    from huggingface_hub.constants import HF_HUB_CACHE

    resolved = Path(path).resolve()
    for cache in (cache_root(), Path(HF_HUB_CACHE)):
        if cache.resolve() in resolved.parents:
            return Path.cwd() / resolved.name
    return Path(path)


def imported_hf_llama(path: Path) -> Path:
    """A Hugging Face Llama directory as a colm checkpoint, imported once into the cache.

    The cache key hashes config.json and each weight file's name, size and modification time, so an
    edited or re-downloaded model is imported again. Cache root: colm_core.cache.cache_root()."""
    from colm_core.llama import HF_CONFIG, import_llama, open_hf_llama

    src = open_hf_llama(path)
    key = hashlib.sha256((src.path / HF_CONFIG).read_bytes())
    for file in src.files:
        stat = file.stat()
        key.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = cache_root() / "imports" / f"{src.path.resolve().name}-{key.hexdigest()[:12]}"
    if not (cache / HF_CONFIG).is_file():
        import_llama(src.path, cache, verify=False, force=True)  # `colm import` verifies; this is its cached twin
    return cache
