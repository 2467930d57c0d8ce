"""Turn what a user typed for a checkpoint into a local colm checkpoint directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

from colm_core.cache import cache_root
from colm_core.errors import ColmError
from colm_core.references import HF_SCHEME


def resolve_input(spec: str | Path) -> Path:
    """The local directory a user's input names: a path, or `hf://ORG/NAME[@REVISION]`'s snapshot."""
    if isinstance(spec, str) and spec.startswith(HF_SCHEME):
        spec = resolve_hub_reference(spec)
    path = Path(spec)
    if not path.exists():
        raise ColmError(f"{spec}: no such checkpoint; check the path (create one with `colm init`)")
    return path


def resolve_checkpoint(spec: str | Path) -> Path:
    """A colm checkpoint directory for a user's input; a Hugging Face directory or a GGUF file is imported
    once into the cache."""
    from colm_core.gguf import is_gguf_file
    from colm_core.llama import is_hf_model_dir

    path = resolve_input(spec)
    if is_hf_model_dir(path):
        return imported_hf_dir(path)
    if is_gguf_file(path):
        return imported_gguf_file(path)
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


def imported_hf_dir(path: Path) -> Path:
    """A Hugging Face directory (a Llama, or a `colm export --format hf`) as a colm checkpoint, imported
    once into the cache.

    The cache key hashes config.json, each weight file's name, size and modification time, and the
    bytes of the tokenizer files and the export's history (or their absence), so an edited or
    re-downloaded model, or a changed or removed tokenizer, is imported again.
    Cache root: colm_core.cache.cache_root()."""
    from colm_core.checkpoint import HISTORY_FILE
    from colm_core.config import CONFIG_FILE
    from colm_core.llama import import_hf, open_hf_dir
    from colm_core.tokenizer import TOKENIZER_FILES

    src = open_hf_dir(path)
    key = hashlib.sha256((src.path / CONFIG_FILE).read_bytes())
    for file in src.files:
        stat = file.stat()
        key.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for name in (*TOKENIZER_FILES, HISTORY_FILE):
        file = src.path / name
        key.update(f"{name}:".encode() + (hashlib.sha256(file.read_bytes()).digest() if file.is_file() else b"-"))
    cache = cache_root() / "imports" / f"{src.path.resolve().name}-{key.hexdigest()[:12]}"
    if not (cache / CONFIG_FILE).is_file():
        import_hf(src.path, cache, verify=False, force=True)  # `colm import` verifies; this is its cached twin
    return cache


def imported_gguf_file(path: Path) -> Path:
    """A GGUF file as a colm checkpoint, imported once into the cache; the key hashes the file's name,
    size and modification time (hashing gigabytes on every command would cost more than the import)."""
    from colm_core.gguf import import_gguf

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = cache_root() / "imports" / f"{path.stem}-{key}"
    if not cache.is_dir():
        import_gguf(path, cache, verify=False, force=True)  # `colm import` verifies; this is its cached twin
    return cache
