"""The Llama <-> 1-chain CoLM correspondence (tensor names, config fields) and `colm import`.

A 1-chain CoLM is a Llama: every CoLM tensor of chain 1 (`.weights.0`, `embed.0`, ...) is the
Llama tensor of the same role. Both the transformers 4.x config layout (`rope_theta`,
`rope_scaling`) and the 5.x one (`rope_parameters`) are read; the 4.x layout is written, as
both versions load it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from colm_core.config import CONFIG_FILE, INDEX_FILE, LLAMA3_ROPE_KEYS, WEIGHTS_FILE, ColmConfig, read_json
from colm_core.errors import ColmError

if TYPE_CHECKING:  # imported where used: commands that never read a GGUF or Llama file skip them
    import torch

# (transformers name pattern, CoLM name pattern); {i} is the layer index.
_LAYER_NAMES = [
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attn.q.weights.0"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attn.k.weights.0"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attn.v.weights.0"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attn.o.weights.0"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.ffn.gate.weights.0"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.ffn.up.weights.0"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.ffn.down.weights.0"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weights.0"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weights.0"),
]
_GLOBAL_NAMES = [
    ("model.embed_tokens.weight", "embed.0"),
    ("model.norm.weight", "norm.weights.0"),
    ("lm_head.weight", "lm_head.0"),
]


def _table(n_layers: int) -> list[tuple[str, str]]:
    return _GLOBAL_NAMES + [(h.format(i=i), c.format(i=i)) for i in range(n_layers) for h, c in _LAYER_NAMES]


def hf_to_colm_names(n_layers: int) -> dict[str, str]:
    return dict(_table(n_layers))


def colm_to_hf_names(n_layers: int) -> dict[str, str]:
    return {c: h for h, c in _table(n_layers)}


def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, Llama-3 rope_scaling or None) from either config layout."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is None:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ColmError(f"RoPE scaling type {kind!r} is not supported; colm supports none or 'llama3'")
    return float(theta), {k: scaling[k] for k in LLAMA3_ROPE_KEYS}


def config_from_hf(hf: dict, tokenizer: str = "byte") -> ColmConfig:
    """A 1-chain ColmConfig from a transformers LlamaForCausalLM config.json."""
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if hf.get("model_type", "llama") != "llama" or "LlamaForCausalLM" not in archs:
        raise ColmError(
            f"architecture {archs[0]!r} (model_type {hf.get('model_type')!r}) is not supported; "
            "colm imports LlamaForCausalLM checkpoints (model_type 'llama')"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ColmError(f"{flag}=true is not supported: CoLM layers have no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ColmError(f"hidden_act {hf['hidden_act']!r} is not supported; Llama uses 'silu'")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if heads * head_dim != hf["hidden_size"]:
        raise ColmError(f"hidden_size {hf['hidden_size']} != heads {heads} x head_dim {head_dim}: not supported")
    theta, scaling = rope_from_hf(hf)

    def one_id(value):
        return value[0] if isinstance(value, list) else value

    return ColmConfig(
        vocab_size=hf["vocab_size"],
        n_layers=hf["num_hidden_layers"],
        head_dim=head_dim,
        heads=[heads],
        kv_heads=[hf.get("num_key_value_heads") or heads],
        ffn=[hf["intermediate_size"]],
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        bos_token_id=one_id(hf.get("bos_token_id")),
        eos_token_id=one_id(hf.get("eos_token_id")),
        pad_token_id=one_id(hf.get("pad_token_id")),
        tokenizer=tokenizer,
    ).validate()


def config_to_hf(cfg: ColmConfig) -> dict:
    """A transformers LlamaForCausalLM config.json for a 1-chain CoLM."""
    if cfg.n_chains != 1:
        raise ColmError(f"this model has {cfg.n_chains} chains; slice to 1 chain first: colm slice --chains 1")
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size(),
        "intermediate_size": cfg.ffn[0],
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.heads[0],
        "num_key_value_heads": cfg.kv_heads[0],
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", **{k: cfg.rope_scaling[k] for k in LLAMA3_ROPE_KEYS}}
    return hf


# --- import: a Hugging Face directory -> a colm checkpoint ---------------------------------------
# Two kinds are read: a transformers LlamaForCausalLM (a 1-chain CoLM), and colm's own `export --format
# hf` (colm's config nested under "colm", the tensors under colm's names), which imports back exactly.

COLM_EXPORT_TYPE = "colm"  # model_type of `colm export --format hf`
IGNORED_HF_TENSORS = (".rotary_emb.inv_freq",)  # a buffer some old checkpoints saved; recomputed from the config


@dataclass
class HFModelDir:
    """A Hugging Face checkpoint directory, read lazily like a colm Checkpoint."""

    path: Path
    hf_config: dict
    config: ColmConfig  # the colm config it imports as
    weight_map: dict[str, str]  # Hugging Face tensor name -> safetensors file name
    to_colm: dict[str, str]  # Hugging Face tensor name -> colm tensor name

    @property
    def is_colm_export(self) -> bool:
        return is_colm_export(self.hf_config)

    @property
    def files(self) -> list[Path]:
        return [self.path / f for f in sorted(set(self.weight_map.values()))]

    def tensors(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        from colm_core.checkpoint import SafetensorsReader

        for name in names:
            with SafetensorsReader(self.path / self.weight_map[name]) as f:
                yield name, f.get_tensor(name)

    def history(self) -> list[dict]:
        """The history an export carries (a Llama directory has none)."""
        from colm_core.checkpoint import HISTORY_FILE, read_history

        path = self.path / HISTORY_FILE
        if not self.is_colm_export or not path.exists():
            return []
        return read_history(path)


def is_colm_export(hf: dict) -> bool:
    return hf.get("model_type") == COLM_EXPORT_TYPE and isinstance(hf.get("colm"), dict)


def is_hf_model_dir(path: Path) -> bool:
    """A directory with a transformers config.json (not a colm one)."""
    try:
        data = read_json(Path(path) / CONFIG_FILE, "")
    except ColmError:
        return False
    return isinstance(data, dict) and "colm_format" not in data and "model_type" in data


def llama_tokenizer_kind(path: Path, vocab_size: int) -> str:
    """ "tokenizer.json" when the directory has one; else "byte", but only for a vocabulary that is colm's
    byte tokenizer: any other would read bytes as the ids of unrelated tokens."""
    from colm_core.tokenizer import TOKENIZER_FILE, ByteTokenizer

    if (path / TOKENIZER_FILE).is_file():
        return TOKENIZER_FILE
    if vocab_size != ByteTokenizer.vocab_size:
        raise ColmError(
            f"{path} has no {TOKENIZER_FILE}, and its vocabulary of {vocab_size:,} tokens is not "
            f"colm's byte tokenizer ({ByteTokenizer.vocab_size}); copy the model's {TOKENIZER_FILE} "
            "into the directory"
        )
    return "byte"


def open_hf_dir(path: str | Path) -> HFModelDir:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ColmError(f"{path} has no {CONFIG_FILE}: not a Hugging Face checkpoint directory")
    hf = read_json(path / CONFIG_FILE, "download the model again")
    if not isinstance(hf, dict):
        raise ColmError(f"{path / CONFIG_FILE}: expected a JSON object; download the model again")
    if "colm_format" in hf:
        raise ColmError(f"{path} is already a colm checkpoint; use it directly")
    if is_colm_export(hf):
        from colm_core.model import expected_shapes

        cfg = ColmConfig.from_dict(hf["colm"], source=f"{path / CONFIG_FILE} (colm export)")
        to_colm = {name: name for name in expected_shapes(cfg)}
    else:
        cfg = config_from_hf(hf)  # the architecture check, before anything else is read
        cfg = cfg.replace(tokenizer=llama_tokenizer_kind(path, cfg.vocab_size))
        to_colm = hf_to_colm_names(cfg.n_layers)
    if (path / INDEX_FILE).is_file():
        from colm_core.checkpoint import read_index

        weight_map = read_index(path / INDEX_FILE, "download the model again")
    elif (path / WEIGHTS_FILE).is_file():
        from colm_core.checkpoint import safetensors_header

        weight_map = {name: WEIGHTS_FILE for name in safetensors_header(path / WEIGHTS_FILE)}
    else:
        raise ColmError(
            f"{path} has no {WEIGHTS_FILE} or {INDEX_FILE}; colm imports safetensors weights only "
            "(convert pickled .bin weights to safetensors first)"
        )
    for file in sorted(set(weight_map.values())):
        if not (path / file).is_file():
            raise ColmError(f"{path / file} is missing (listed in {INDEX_FILE}); download the shard again")
    return HFModelDir(path, hf, cfg, weight_map, to_colm)


def source_names(src: HFModelDir) -> dict[str, str]:
    """colm tensor name -> the directory's tensor name, in colm's order (as colm writes every checkpoint),
    refusing a missing or unexpected tensor."""
    from colm_core.model import expected_shapes

    for name in src.weight_map:
        if name not in src.to_colm and not name.endswith(IGNORED_HF_TENSORS):
            raise ColmError(f"{src.path}: unexpected tensor {name!r}; is this a plain LlamaForCausalLM?")
    from_colm = {c: h for h, c in src.to_colm.items()}
    names = {c: from_colm[c] for c in expected_shapes(src.config)}
    for name in names.values():
        if name not in src.weight_map:
            raise ColmError(f"{src.path}: tensor {name!r} is missing; config.json says the model has it")
    return names


def imported_tensors(src: HFModelDir, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The directory's tensors under their colm names, one at a time, checked against the config's shapes."""
    from colm_core.model import expected_shapes

    expected = expected_shapes(src.config)
    names = source_names(src)
    to_colm = {h: c for c, h in names.items()}
    for name, tensor in src.tensors(list(names.values())):
        colm_name = to_colm[name]
        if tuple(tensor.shape) != expected[colm_name]:
            raise ColmError(
                f"{src.path}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"config.json implies {list(expected[colm_name])}"
            )
        yield colm_name, tensor.to(dtype)
        del tensor  # before the next one is read: one tensor in memory at a time


def weights_dtype(src: HFModelDir) -> torch.dtype:
    """The embedding's dtype, from its file's header: colm stores one dtype, and Llama checkpoints use
    one for all weights."""
    import torch

    from colm_core.checkpoint import FLOAT_DTYPES, safetensors_header

    name = source_names(src)["embed.0"]
    stored = safetensors_header(src.path / src.weight_map[name])[name][0]
    return {code: dtype for dtype, code in FLOAT_DTYPES.items()}.get(stored, torch.float32)


def import_hf(hf_dir: str | Path, out: str | Path, *, verify: bool = True, force: bool = False) -> dict:
    """Write a Hugging Face Llama directory as a 1-chain CoLM checkpoint, or a `colm export --format hf`
    directory as the checkpoint it was exported from; returns the verification report."""
    from colm_core.checkpoint import atomic_directory, history_entry, write_checkpoint
    from colm_core.tokenizer import load_tokenizer
    from colm_core.verify import verify_import, verify_same_tensors

    src = open_hf_dir(hf_dir)
    cfg = src.config
    with atomic_directory(out, force, inputs=[src.path]) as tmp:
        tokenizer = load_tokenizer(cfg.tokenizer, src.path, cfg.bos_token_id, cfg.eos_token_id)
        history = src.history() + [history_entry("import", {"source": str(src.path)}, inputs=[src])]
        write_checkpoint(tmp, cfg, imported_tensors(src, weights_dtype(src)), tokenizer, history)
        if not verify:
            return {}
        if src.is_colm_export:
            return verify_same_tensors(imported_tensors(src, weights_dtype(src)), tmp)
        return verify_import(src.path, tmp)
