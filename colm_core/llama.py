"""The Llama <-> 1-chain CoLM correspondence: tensor names and config fields, nothing else.

A 1-chain CoLM is a Llama: every CoLM tensor of chain 1 (`.weights.0`, `embed.0`, ...) is the
Llama tensor of the same role. Both the transformers 4.x config layout (`rope_theta`,
`rope_scaling`) and the 5.x one (`rope_parameters`) are read; the 4.x layout is written, as
both versions load it.
"""

from __future__ import annotations

from colm_core.config import LLAMA3_ROPE_KEYS, ColmConfig
from colm_core.errors import ColmError

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
        raise ColmError(f"architecture {archs[0]!r} (model_type {hf.get('model_type')!r}) is not supported; "
                        "colm imports LlamaForCausalLM checkpoints (model_type 'llama')")
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
        vocab_size=hf["vocab_size"], n_layers=hf["num_hidden_layers"], head_dim=head_dim, heads=[heads],
        kv_heads=[hf.get("num_key_value_heads") or heads], ffn=[hf["intermediate_size"]],
        rope_theta=theta, rope_scaling=scaling, norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=hf.get("max_position_embeddings", 2048), bos_token_id=one_id(hf.get("bos_token_id")),
        eos_token_id=one_id(hf.get("eos_token_id")), pad_token_id=one_id(hf.get("pad_token_id")),
        tokenizer=tokenizer).validate()


def config_to_hf(cfg: ColmConfig) -> dict:
    """A transformers LlamaForCausalLM config.json for a 1-chain CoLM."""
    if cfg.n_chains != 1:
        raise ColmError(f"this model has {cfg.n_chains} chains; slice to 1 chain first: colm slice --chains 1")
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size(), "intermediate_size": cfg.ffn[0],
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.heads[0],
        "num_key_value_heads": cfg.kv_heads[0], "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
    }
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", **{k: cfg.rope_scaling[k] for k in LLAMA3_ROPE_KEYS}}
    return hf

