"""Tokenizers: a built-in byte tokenizer (no files) and any Hugging Face tokenizer.json.

`encode(text, add_special_tokens=True)` is the one place that decides what starts a sequence
(a prompt, an evaluated or trained document): the byte tokenizer prepends its BOS; a Hugging Face
tokenizer follows its own policy, its tokenizer.json's post_processor, exactly as transformers 5
encodes (it ignores tokenizer_config.json's add_bos_token when a tokenizer.json is present, and so
does colm). SmolLM2's adds no BOS; Llama 3's adds one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from colm_core.config import read_json
from colm_core.errors import ColmError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # special tokens, chat template, add_bos_token
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves the chat template
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE)  # stored verbatim in a checkpoint


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 is BOS, 257 is EOS."""

    kind = "byte"
    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return ([self.bos_id] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def byte_length(self, ids: list[int]) -> int:
        return sum(1 for i in ids if i < 256)

    def save(self, directory: Path) -> None:
        """Nothing to write: config.json's `tokenizer: "byte"` is the whole description."""


class HFTokenizer:
    """A `tokenizers` tokenizer.json, stored verbatim in the checkpoint with its tokenizer_config.json
    and chat template when the model has them."""

    kind = TOKENIZER_FILE

    def __init__(self, path: Path, bos_id: int | None = None, eos_id: int | None = None):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exceptions for malformed files
            raise ColmError(f"{path}: not a readable tokenizer.json ({e}); replace it with a valid one") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = bos_id, eos_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def byte_length(self, ids: list[int]) -> int:
        return len(self.decode(ids).encode("utf-8"))

    def save(self, directory: Path) -> None:
        for name in TOKENIZER_FILES:
            source, target = self.path.parent / name, Path(directory) / name
            if source.is_file() and source.resolve() != target.resolve():
                shutil.copyfile(source, target)


def tokenizer_config(directory: Path) -> dict:
    """tokenizer_config.json of a directory ({} when absent)."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.exists():
        return {}
    data = read_json(path, "restore it from the model's source")
    return data if isinstance(data, dict) else {}


def load_tokenizer(kind: str, directory: Path | None = None, bos_id: int | None = None, eos_id: int | None = None):
    """The tokenizer config.json names: "byte", or "tokenizer.json" read from `directory`."""
    if kind == "byte":
        return ByteTokenizer()
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ColmError(f"{path} is missing but config.json names it; copy the tokenizer.json back into the checkpoint")
    return HFTokenizer(path, bos_id, eos_id)
