"""Text corpora: which files to read, the embedded default corpus, and training batches from a token cache."""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch

from colm_core.cache import cache_root, process_alive
from colm_core.errors import ColmError, OptionError

DEFAULT_CORPUS_BYTES = 4 * 2**20


def resolve_text_files(specs: list[str | Path]) -> list[Path]:
    """Expand files, directories and glob patterns into a list of text files.

    A directory gives every file below it, sorted, except hidden ones and those inside hidden
    directories (.git, .cache, ...). Files that are not UTF-8 text are left out with one note on stderr.
    """
    files: list[Path] = []
    for m in matched_paths(specs):
        if m.is_dir():
            files += sorted(
                p
                for p in m.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(m).parts)
            )
        elif m.is_file():
            files.append(m)
        else:
            raise OptionError("{data} {value}: no such file or directory; check the path", value=m)
    text, binary = [], []
    for p in files:
        (text if is_text_file(p) else binary).append(p)
    skipped = f"{len(binary)} file(s) that are not UTF-8 text, e.g. {binary[0]}" if binary else ""
    if not text:
        raise ColmError(
            f"--data {' '.join(map(str, specs))}: no text files found"
            + (f" (skipped {skipped})" if binary else "")
            + "; point it at UTF-8 text files"
        )
    if binary:
        print(f"--data: skipped {skipped}", file=sys.stderr)
    return text


def matched_paths(specs: list[str | Path]) -> list[Path]:
    """The files and directories a --data list names, its glob patterns expanded."""
    paths = []
    for spec in map(str, specs):
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise OptionError("{data} {value}: the pattern matches no file; check the path", value=spec)
        paths += map(Path, matches)
    return paths


def is_text_file(path: Path, probe_bytes: int = 1 << 16) -> bool:
    """Whether the file's first bytes are UTF-8 without NUL bytes (which no text file holds)."""
    with open(path, "rb") as f:
        head = f.read(probe_bytes)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def read_texts(specs: list[str | Path]) -> list[str]:
    """The documents of a --data list, decoded as UTF-8 (bad bytes replaced). Empty data is an error."""
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in resolve_text_files(specs)]
    if not any(texts):
        raise OptionError(
            "{data} {value}: the files are empty; give text with some content", value=" ".join(map(str, specs))
        )
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


# --- training data: token cache and batches ------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> bytes:
    """What makes two tokenizers produce the same ids: kind, special ids, what starts a sequence, and the
    tokenizer.json bytes."""
    starts = tokenizer.encode("", add_special_tokens=True)
    h = hashlib.sha256(f"{tokenizer.kind}|{tokenizer.bos_id}|{tokenizer.eos_id}|{starts}".encode())
    if getattr(tokenizer, "path", None) is not None:
        h.update(Path(tokenizer.path).read_bytes())
    return h.digest()


def data_digest(files: list[Path], tokenizer) -> str:
    """What a token stream is, whatever the files' names: the sha256 of the tokenizer's fingerprint and of
    each file's contents, in order."""
    h = hashlib.sha256(tokenizer_fingerprint(tokenizer))
    for f in files:
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def token_cache(files: list[Path], tokenizer, digest: str | None = None) -> np.ndarray:
    """The token stream of `files` (BOS doc EOS ..., as evaluation reads them) as a read-only memory map.

    Tokenized once: the cache file is named by data_digest (`digest`, when the caller has it), so an
    edited file or another tokenizer gets a new entry. Concurrent writers (torchrun ranks) each
    write a private temporary file and rename it into place, which is atomic.
    """
    from colm_core.evaluate import token_stream

    digest = digest or data_digest(files, tokenizer)
    path = cache_root() / "tokens" / f"{digest[:32]}.npy"
    if not path.is_file():
        ids = np.asarray(token_stream(tokenizer, read_texts(files)), dtype=np.uint32)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.tmp"):  # what killed writers left: .STEM.PID.tmp
            pid = stale.name.split(".")[-2]
            if pid.isdigit() and not process_alive(int(pid)):
                stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def split_tokens(tokens: np.ndarray, seq_len: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the last val_fraction of the stream (at least one window) is held out."""
    n_val = max(seq_len + 1, int(len(tokens) * val_fraction))
    if len(tokens) - n_val < seq_len + 1:
        raise ColmError(
            f"--data has {len(tokens):,} tokens: too few for training and validation windows of "
            f"{seq_len + 1} tokens; give more text or lower --seq-len"
        )
    return tokens[:-n_val], tokens[-n_val:]


def default_validation_tokens(tokenizer) -> list[int]:
    """The part of the embedded corpus that `colm train` without --data holds out: its validation split."""
    from colm_core.options import TrainOptions

    defaults = TrainOptions()
    _, held_out = split_tokens(token_cache(default_corpus_files(), tokenizer), defaults.seq_len, defaults.val_fraction)
    return held_out.tolist()


def sample_windows(tokens: np.ndarray, seq_len: int, count: int, seed: int, step: int) -> torch.Tensor:
    """`count` random windows of seq_len + 1 tokens for one optimizer step, (count, seq_len + 1) int64.

    A pure function of (seed, step): the data position of a run is its step number, so a resumed run
    and a run on several processes (each taking its rows of the same global batch) see the same data.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=count)
    return torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64))


def fixed_windows(tokens: np.ndarray, seq_len: int, max_windows: int) -> torch.Tensor:
    """Consecutive windows of seq_len + 1 tokens overlapping by one, from the start: the validation set."""
    n = min(max_windows, (len(tokens) - 1) // seq_len)
    return torch.from_numpy(
        np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]).astype(np.int64)
    )
