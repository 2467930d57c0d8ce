"""`colm export`: a checkpoint as a directory that `transformers` loads, streamed tensor by tensor.

    hf-llama  a 1-chain CoLM as a standard LlamaForCausalLM (no trust_remote_code)
    hf        any CoLM, weights under colm's names, with the self-contained modeling file
              hf_modeling/modeling_colm.py (trust_remote_code=True; `chains` picks the sub-model)

Both write config.json, safetensors (sharded with an index when large), tokenizer.json and
tokenizer_config.json (colm's byte tokenizer becomes an equivalent byte-level tokenizer.json),
generation_config.json, colm_history.json and a model card.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from colm_core.card import model_card
from colm_core.checkpoint import (
    CARD_FILE,
    DEFAULT_MAX_SHARD_BYTES,
    DTYPE_NAMES,
    Checkpoint,
    atomic_directory,
    expected_shapes,
    history_entry,
    open_checkpoint,
    write_history,
    write_last_file,
    write_weights,
)
from colm_core.config import ColmConfig
from colm_core.errors import OptionError
from colm_core.llama import COLM_EXPORT_TYPE, colm_to_hf_names, config_to_hf
from colm_core.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, tokenizer_config

FORMATS = ("hf-llama", "hf")
MODELING_FILE = Path(__file__).parent / "hf_modeling" / "modeling_colm.py"


def byte_level_tokenizer():
    """colm's byte tokenizer as a `tokenizers` Tokenizer: byte b is token b; special tokens 256 and 257,
    and BOS starts every sequence, as colm's byte tokenizer starts one."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    # GPT-2's printable stand-in for each byte, which the ByteLevel pre-tokenizer and decoder use.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    stand_in = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
    tok = Tokenizer(models.BPE(vocab={stand_in[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True), AddedToken("<|end_of_text|>", special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 256)]
    )
    return tok


def write_tokenizer(ckpt: Checkpoint, directory: Path) -> None:
    """tokenizer.json and a tokenizer_config.json that AutoTokenizer reads.

    A model's own tokenizer_config.json (chat template, special tokens, tokenizer class) and
    chat_template.jinja, carried by `colm import`, are written as they are; only what they lack is added:
    the special tokens of config.json's ids and tokenizer.json's unk_token."""
    from tokenizers import Tokenizer

    cfg = ckpt.config
    if cfg.tokenizer == "byte":
        tok = byte_level_tokenizer()
        tok.save(str(directory / TOKENIZER_FILE))
        stored = {}
    else:
        tok = ckpt.tokenizer()
        tok.save(directory)  # tokenizer.json, and the model's tokenizer_config.json and chat template if any
        stored = tokenizer_config(directory)
        tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    special = {}
    for role in ("bos", "eos", "pad"):
        token_id = getattr(cfg, f"{role}_token_id")
        if token_id is not None and tok.id_to_token(token_id) is not None:
            special[f"{role}_token"] = tok.id_to_token(token_id)
    unk = json.loads(tok.to_str())["model"].get("unk_token")
    if unk is not None:
        special["unk_token"] = unk
    written = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
        **special,
        **stored,
    }
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(written, indent=2) + "\n")


def generation_config(cfg: ColmConfig) -> dict:
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}


def hf_colm_config(cfg: ColmConfig, dtype: torch.dtype) -> dict:
    """config.json of a `--format hf` export: colm's config nested under "colm", plus auto_map."""
    return {
        "architectures": ["ColmForCausalLM"],
        "model_type": COLM_EXPORT_TYPE,
        "auto_map": {
            "AutoConfig": "modeling_colm.ColmHFConfig",
            "AutoModelForCausalLM": "modeling_colm.ColmForCausalLM",
        },
        "colm": cfg.to_dict(),
        "chains": cfg.n_chains,
        "dtype": DTYPE_NAMES[dtype],
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }


def exported_names(cfg: ColmConfig, fmt: str) -> dict[str, str]:
    """colm tensor name -> exported name, in the model's order."""
    hf_names = colm_to_hf_names(cfg.n_layers) if fmt == "hf-llama" else {}
    return {name: hf_names.get(name, name) for name in expected_shapes(cfg)}


def exported_tensors(ckpt: Checkpoint, fmt: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    names = exported_names(ckpt.config, fmt)
    for name, tensor in ckpt.tensors(names):
        yield names[name], tensor.to(dtype)
        del tensor  # before the next one is read: one tensor in memory at a time


def export(
    path: Path,
    out: Path,
    *,
    fmt: str,
    dtype: torch.dtype | None = None,
    verify: bool = True,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> dict:
    """Write `path` in `fmt` to `out`; returns the verification report (or {})."""
    from colm_core.verify import verify_export

    if fmt not in FORMATS:
        raise OptionError(
            "{fmt} {value}: choose one of {choices}", {"fmt": "--format"}, value=fmt, choices=", ".join(FORMATS)
        )
    ckpt = open_checkpoint(path)
    cfg, dtype = ckpt.config, dtype or ckpt.dtype
    if fmt == "hf-llama":
        config = {**config_to_hf(cfg), "dtype": DTYPE_NAMES[dtype]}  # refuses more than 1 chain
    else:
        config = hf_colm_config(cfg, dtype)
    history = ckpt.history + [history_entry("export", dict(format=fmt, dtype=DTYPE_NAMES[dtype]), inputs=[ckpt])]
    with atomic_directory(out, force, inputs=[path]) as tmp:
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
        shapes = expected_shapes(cfg)
        layout = {exported: shapes[name] for name, exported in exported_names(cfg, fmt).items()}
        write_weights(tmp, exported_tensors(ckpt, fmt, dtype), layout, max_shard_bytes)
        if fmt == "hf":
            shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        write_tokenizer(ckpt, tmp)
        write_history(tmp, history)
        (tmp / CARD_FILE).write_text(model_card(cfg, history))
        write_last_file(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        return verify_export(ckpt.path, tmp, fmt, dtype) if verify else {}
