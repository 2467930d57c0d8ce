"""Text corpora: which files to read, and the embedded default corpus."""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path

from colm_core.errors import ColmError

DEFAULT_CORPUS_BYTES = 4 * 2**20


def resolve_text_files(specs: list[str | Path]) -> list[Path]:
    """Expand files, directories (every file below, sorted) and glob patterns into a file list."""
    files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise ColmError(f"--data {spec}: the pattern matches no file; check the path")
        for m in map(Path, matches):
            if m.is_dir():
                files += sorted(p for p in m.rglob("*") if p.is_file() and not p.name.startswith("."))
            elif m.is_file():
                files.append(m)
            else:
                raise ColmError(f"--data {m}: no such file or directory; check the path")
    if not files:
        raise ColmError(f"--data {' '.join(map(str, specs))}: no files found; point it at text files")
    return files


def read_texts(specs: list[str | Path]) -> list[str]:
    """The documents of a --data list, decoded as UTF-8 (bad bytes replaced). Empty data is an error."""
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in resolve_text_files(specs)]
    if not any(texts):
        raise ColmError(f"--data {' '.join(map(str, specs))}: the files are empty; give text with some content")
    return texts


def default_corpus_files(max_bytes: int = DEFAULT_CORPUS_BYTES) -> list[Path]:
    """The running Python's standard-library sources: text every machine has, no download needed."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for p in sorted(stdlib.glob("*.py")):
        files.append(p)
        total += p.stat().st_size
        if total >= max_bytes:
            break
    return files
