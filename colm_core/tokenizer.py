"""Tokenizers: a built-in byte tokenizer (no files) and any Hugging Face tokenizer.json."""

from __future__ import annotations

import shutil
from pathlib import Path

from colm_core.errors import ColmError

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 is BOS, 257 is EOS."""

    kind = "byte"
    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def byte_length(self, ids: list[int]) -> int:
        return sum(1 for i in ids if i < 256)

    def save(self, directory: Path) -> None:
        """Nothing to write: config.json's `tokenizer: "byte"` is the whole description."""


class HFTokenizer:
    """A `tokenizers` tokenizer.json, stored verbatim in the checkpoint."""

    kind = TOKENIZER_FILE

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exceptions for malformed files
            raise ColmError(f"{path}: not a readable tokenizer.json ({e}); replace it with a valid one") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self.eos_id = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def byte_length(self, ids: list[int]) -> int:
        return len(self.decode(ids).encode("utf-8"))

    def save(self, directory: Path) -> None:
        target = Path(directory) / TOKENIZER_FILE
        if self.path.resolve() != target.resolve():
            shutil.copyfile(self.path, target)


def load_tokenizer(kind: str, directory: Path | None = None, bos_id: int | None = None, eos_id: int | None = None):
    """The tokenizer config.json names: "byte", or "tokenizer.json" read from `directory`."""
    if kind == "byte":
        return ByteTokenizer()
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ColmError(f"{path} is missing but config.json names it; copy the tokenizer.json back into the checkpoint")
    tok = HFTokenizer(path)
    tok.bos_id, tok.eos_id = bos_id, eos_id
    return tok
