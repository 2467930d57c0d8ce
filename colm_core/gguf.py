"""GGUF files (llama.cpp, Ollama) -> 1-chain CoLM checkpoints: `colm import FILE.gguf`.

A Llama GGUF holds the same tensors as a Hugging Face LlamaForCausalLM under llama.cpp's names,
with three differences undone here:
- weights may be quantized: every type is dequantized to float32 by the `gguf` package, so the
  checkpoint is float32 whatever the file's types;
- llama.cpp's converter permutes the rows of the query and key projections (its RoPE pairs
  neighbouring dimensions, transformers' pairs the two halves of a head): undone per head;
- there is no config.json or tokenizer.json: the hyper-parameters are `llama.*` metadata and the
  tokenizer is `tokenizer.ggml.*` metadata, rebuilt here into a tokenizer.json as transformers'
  own GGUF loading does (byte-level BPE for `gpt2`, SentencePiece-style BPE for `llama`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from colm_core.config import ColmConfig
from colm_core.errors import ColmError
from colm_core.llama import config_from_hf

if TYPE_CHECKING:  # imported where used: commands that never read a GGUF or Llama file skip them
    import gguf
    import tokenizers
    import torch

GGUF_SUFFIX = ".gguf"
ARCHITECTURE = "llama"

# llama.cpp tensor name -> colm tensor name; {i} is the layer index.
_GLOBAL_NAMES = {"token_embd.weight": "embed.0", "output_norm.weight": "norm.weights.0", "output.weight": "lm_head.0"}
_LAYER_NAMES = {
    "blk.{i}.attn_q.weight": "layers.{i}.attn.q.weights.0",
    "blk.{i}.attn_k.weight": "layers.{i}.attn.k.weights.0",
    "blk.{i}.attn_v.weight": "layers.{i}.attn.v.weights.0",
    "blk.{i}.attn_output.weight": "layers.{i}.attn.o.weights.0",
    "blk.{i}.ffn_gate.weight": "layers.{i}.ffn.gate.weights.0",
    "blk.{i}.ffn_up.weight": "layers.{i}.ffn.up.weights.0",
    "blk.{i}.ffn_down.weight": "layers.{i}.ffn.down.weights.0",
    "blk.{i}.attn_norm.weight": "layers.{i}.attn_norm.weights.0",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weights.0",
}

# GGUF token types (llama.cpp's llama_token_type)
CONTROL, USER_DEFINED = 3, 4
# The pre-tokenizer split of byte-level vocabularies that do not use GPT-2's (tokenizer.ggml.pre).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT}


def is_gguf_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX and Path(path).is_file()


@dataclass
class GGUFModel:
    """A Llama GGUF file, its metadata read; tensors are read (memory-mapped) one at a time."""

    path: Path
    reader: gguf.GGUFReader
    metadata: dict  # key -> value (strings, numbers, lists)
    config: ColmConfig

    @property
    def files(self) -> list[Path]:  # what history_entry hashes
        return [self.path]

    def colm_names(self) -> dict[str, str]:
        """llama.cpp tensor name -> colm tensor name, for every tensor the file must have."""
        names = {g: c for g, c in _GLOBAL_NAMES.items() if g != "output.weight" or not self.config.tie_embeddings}
        for i in range(self.config.n_layers):
            names |= {g.format(i=i): c.format(i=i) for g, c in _LAYER_NAMES.items()}
        return names

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights under colm's names, in colm's order, dequantized to float32, q/k rows unpermuted."""
        import numpy as np
        import torch
        from gguf import dequantize

        from colm_core.model import expected_shapes

        by_name = {t.name: t for t in self.reader.tensors}
        from_colm = {c: g for g, c in self.colm_names().items()}
        for colm_name, shape in expected_shapes(self.config).items():
            t = by_name[from_colm[colm_name]]
            weight = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(shape)
            if colm_name.endswith((".attn.q.weights.0", ".attn.k.weights.0")):
                heads = self.config.heads[0] if ".q." in colm_name else self.config.kv_heads[0]
                weight = unpermute_rows(weight, heads)
            yield colm_name, weight


def unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's permutation of a query/key projection: within each head, row 2j+p of the file is
    row p*(head_dim/2)+j of the Hugging Face weight."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).transpose(1, 2).reshape(weight.shape).contiguous()


def _field_value(field):
    """A metadata value as Python: a number, a string, or a list of them."""
    from gguf import GGUFValueType

    value = field.contents()
    if field.types and field.types[0] == GGUFValueType.ARRAY and not isinstance(value, list):
        value = [value]
    return value


def open_gguf(path: str | Path) -> GGUFModel:
    """Read a GGUF file's metadata and check that colm can import it (architecture, tensor types, names)."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path)
        meta = {key: _field_value(field) for key, field in reader.fields.items()}  # strings decode here
    except Exception as e:  # gguf raises ValueError/struct.error/UnicodeDecodeError... on a damaged or foreign file
        raise ColmError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); download it again") from None
    arch = meta.get("general.architecture")
    if arch != ARCHITECTURE:
        raise ColmError(f"{path}: GGUF architecture {arch!r} is not supported; colm imports 'llama' GGUF files")
    unsupported = sorted({t.tensor_type.name for t in reader.tensors if not dequantizable(t.tensor_type)})
    if unsupported:
        raise ColmError(
            f"{path}: tensor type {unsupported[0]} cannot be dequantized by the installed gguf "
            "package; upgrade it (pip install -U gguf) or convert the file to another type"
        )
    tensor_names = {t.name for t in reader.tensors}
    try:
        cfg = config_from_hf(hf_config(meta, tensor_names, path), tokenizer="tokenizer.json")
    except ColmError as e:
        if str(e).startswith(str(path)):
            raise
        raise ColmError(f"{path}: its metadata describes no model colm can build: {e}") from None
    model = GGUFModel(path, reader, meta, cfg)
    expected = model.colm_names()
    extra = sorted(tensor_names - set(expected))
    if extra:
        hint = (
            " (Llama 3 RoPE scaling, which GGUF stores as frequencies; not supported)"
            if extra[0] == "rope_freqs.weight"
            else ""
        )
        raise ColmError(f"{path}: unexpected tensor {extra[0]!r}{hint}; colm imports plain Llama GGUF files")
    missing = [name for name in expected if name not in tensor_names]
    if missing:
        raise ColmError(f"{path}: tensor {missing[0]!r} is missing; the metadata says the model has it")
    check_tensors(model)
    return model


def check_tensors(model: GGUFModel) -> None:
    """Every tensor has the shape the metadata's configuration gives it, and a type whose blocks tile its
    rows: a tensor stored transposed, or metadata that lies about a size, would otherwise load scrambled."""
    from gguf import GGML_QUANT_SIZES

    from colm_core.model import expected_shapes

    shapes = expected_shapes(model.config)
    to_colm = model.colm_names()
    for t in model.reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        expected = shapes[to_colm[t.name]]
        if shape != expected:
            raise ColmError(
                f"{model.path}: tensor {t.name!r} has shape {list(shape)}, but the metadata describes a "
                f"model whose {t.name} is {list(expected)}; the file is inconsistent: convert it again"
            )
        block = GGML_QUANT_SIZES[t.tensor_type][0]
        if shape[-1] % block:
            raise ColmError(
                f"{model.path}: tensor {t.name!r} is stored as {t.tensor_type.name}, whose blocks of "
                f"{block} values do not tile its rows of {shape[-1]}; the file is inconsistent: convert "
                "it again"
            )


def dequantizable(kind) -> bool:
    """Whether the installed gguf package dequantizes this type (it raises NotImplementedError for the
    types it only names): tried on one zero block."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, dequantize

    try:
        dequantize(np.zeros(GGML_QUANT_SIZES[kind][1], dtype=np.uint8), kind)
    except NotImplementedError:
        return False
    return True


def hf_config(meta: dict, tensor_names: set[str], path: Path) -> dict:
    """A transformers Llama config.json from `llama.*` metadata, so that config_from_hf checks it as any import."""

    def need(key):
        if key not in meta:
            raise ColmError(f"{path}: metadata {key!r} is missing; not a complete llama GGUF file")
        return meta[key]

    def positive(key, default=None, kind=(int, float)):
        value = need(key) if default is None else meta.get(key, default)
        if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < float("inf"):
            what = "whole number" if kind is int else "number"
            raise ColmError(
                f"{path}: metadata {key!r} is {value!r}, not a positive {what}; the file is "
                "inconsistent: convert it again"
            )
        return value

    def count(key, default=None):
        return positive(key, default, int)

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ColmError(f"{path}: RoPE scaling {scaling!r} is not supported; colm imports GGUF files without it")
    need("tokenizer.ggml.tokens")
    tokens = listed(meta, "tokenizer.ggml.tokens", str, path)
    hidden, heads = count("llama.embedding_length"), count("llama.attention.head_count")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": count("llama.vocab_size", len(tokens)),
        "hidden_size": hidden,
        "intermediate_size": count("llama.feed_forward_length"),
        "num_hidden_layers": count("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": count("llama.attention.head_count_kv", heads),
        "head_dim": count("llama.rope.dimension_count", max(hidden // heads, 1)),
        "rope_theta": positive("llama.rope.freq_base", 10000.0),
        "rms_norm_eps": positive("llama.attention.layer_norm_rms_epsilon"),
        "max_position_embeddings": count("llama.context_length", 2048),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        **{
            f"{hf}_token_id": token_id(meta, f"tokenizer.ggml.{gguf}_token_id", tokens, path)
            for hf, gguf in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
        },
    }


# --- the tokenizer ---------------------------------------------------------------------------------


def build_tokenizer(meta: dict, path: Path) -> tokenizers.Tokenizer:
    """The tokenizer the `tokenizer.ggml.*` metadata describes, as transformers' GGUF loading builds it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    tokens = listed(meta, "tokenizer.ggml.tokens", str, path)
    types = listed(meta, "tokenizer.ggml.token_type", int, path) or [0] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in listed(meta, "tokenizer.ggml.merges", str, path)]
        tok = Tokenizer(bpe(path, vocab, merges))
        split = _SPLITS.get(meta.get("tokenizer.ggml.pre"))
        tok.pre_tokenizer = (
            pre_tokenizers.ByteLevel(add_prefix_space=False)
            if split is None
            else pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        )
        tok.decoder = decoders.ByteLevel()
        default_bos = False
    elif kind == "llama":
        merges = (
            [tuple(m.split(" ", 1)) for m in listed(meta, "tokenizer.ggml.merges", str, path)]
            if "tokenizer.ggml.merges" in meta
            else merges_from_scores(
                tokens, listed(meta, "tokenizer.ggml.scores", (int, float), path) or [0.0] * len(tokens)
            )
        )
        unk = token_id(meta, "tokenizer.ggml.unknown_token_id", tokens, path)
        tok = Tokenizer(
            bpe(path, vocab, merges, unk_token=None if unk is None else tokens[unk], fuse_unk=True, byte_fallback=True)
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        default_bos = True
    else:
        raise ColmError(
            f"{path}: tokenizer.ggml.model {kind!r} is not supported; colm rebuilds 'gpt2' (byte-level "
            "BPE) and 'llama' (SentencePiece) tokenizers"
        )
    byte_alphabet = set(decoders_byte_alphabet()) if kind == "gpt2" else None
    tok.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, kind_ in zip(tokens, types)
            if kind_ == CONTROL and (byte_alphabet is None or set(t) <= byte_alphabet)
        ]
    )
    tok.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED]
    )
    bos, eos = (token_id(meta, f"tokenizer.ggml.{which}_token_id", tokens, path) for which in ("bos", "eos"))
    add_bos = meta.get("tokenizer.ggml.add_bos_token", default_bos) and bos is not None
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False) and eos is not None
    if add_bos or add_eos:
        first = [tokens[bos]] if add_bos else []
        last = [tokens[eos]] if add_eos else []
        special = sorted({(tokens[i], i) for i in [bos] * add_bos + [eos] * add_eos}, key=lambda s: s[1])
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(first + ["$A"] + last),
            pair=" ".join(first + ["$A"] + last + first + ["$B"] + last),
            special_tokens=special,
        )
    return tok


def listed(meta: dict, key: str, kind, path: Path) -> list:
    """A list metadata value whose items are all of `kind` ([] when absent)."""
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ColmError(
            f"{path}: metadata {key!r} is not a list of {getattr(kind, '__name__', 'number')}s; the file "
            "is inconsistent: convert it again"
        )
    return value


def token_id(meta: dict, key: str, tokens: list[str], path: Path) -> int | None:
    """A token id metadata value (None when absent): one of the vocabulary's."""
    value = meta.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(tokens)):
        raise ColmError(
            f"{path}: metadata {key!r} is {value!r}, not a token id of its {len(tokens)}-token vocabulary; "
            "the file is inconsistent: convert it again"
        )
    return value


def bpe(path: Path, vocab: dict, merges: list, **options):
    """tokenizers' BPE model, its refusal (a merge of tokens the vocabulary lacks, ...) as a ColmError."""
    from tokenizers import models

    try:
        return models.BPE(vocab, merges, **options)
    except Exception as e:  # tokenizers raises plain Exceptions
        raise ColmError(
            f"{path}: its tokenizer metadata builds no tokenizer ({' '.join(str(e).split())}); the file is "
            "inconsistent: convert it again"
        ) from None


def decoders_byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, which every byte-level vocabulary is written in."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel.alphabet()


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies: every split of a token into two tokens, best score
    first (transformers' generate_merges, so that both tokenize alike)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores):
        local = [
            (token[:k], token[k:], score) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab
        ]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def write_tokenizer(model: GGUFModel, directory: Path) -> None:
    """tokenizer.json, and tokenizer_config.json with the chat template when the file has one."""
    import json

    from colm_core.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

    build_tokenizer(model.metadata, model.path).save(str(directory / TOKENIZER_FILE))
    template = model.metadata.get("tokenizer.chat_template")
    if template:
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"chat_template": template}, indent=2) + "\n")


# --- import ------------------------------------------------------------------------------------------


def import_gguf(file: str | Path, out: str | Path, *, verify: bool = True, force: bool = False) -> dict:
    """Write a Llama GGUF file as a 1-chain float32 CoLM checkpoint; returns the verification report."""
    import tempfile

    from colm_core.checkpoint import atomic_directory, history_entry, write_checkpoint
    from colm_core.tokenizer import load_tokenizer
    from colm_core.verify import verify_gguf_import

    src = open_gguf(file)
    cfg = src.config
    with atomic_directory(out, force, inputs=[src.path]) as tmp, tempfile.TemporaryDirectory() as built:
        history = [history_entry("import", {"source": str(src.path)}, inputs=[src])]
        write_tokenizer(src, Path(built))
        tokenizer = load_tokenizer(cfg.tokenizer, Path(built), cfg.bos_token_id, cfg.eos_token_id)
        write_checkpoint(tmp, cfg, src.tensors(), tokenizer, history)
        return verify_gguf_import(src.path, tmp) if verify else {}
