"""A 1-chain CoLM is a Llama: same weights as transformers' LlamaForCausalLM, same logits."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from colm_core.llama import colm_to_hf_names, config_to_hf
from colm_core.model import CoLM
from tests.conftest import tiny_config, tiny_model
from tests.test_model import first_chains_model

LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def as_transformers(model: CoLM) -> LlamaForCausalLM:
    hf = LlamaForCausalLM(LlamaConfig(**config_to_hf(model.config))).eval()
    names = colm_to_hf_names(model.config.n_layers)
    state = {names[k]: v for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf


@pytest.mark.parametrize(
    "overrides",
    [
        dict(heads=[4], kv_heads=[2], ffn=[40]),  # GQA, untied
        dict(heads=[4], kv_heads=[4], ffn=[40], tie_embeddings=True),  # MHA, tied
        dict(heads=[6], kv_heads=[2], ffn=[24], rope_scaling=LLAMA3_SCALING),  # GQA + Llama-3 RoPE scaling
        dict(heads=[2], kv_heads=[1], ffn=[24], rope_theta=500000.0, tie_embeddings=True, rope_scaling=LLAMA3_SCALING),
    ],
    ids=["gqa", "tied", "rope-scaling", "tied-rope-scaling"],
)
def test_one_chain_colm_matches_transformers_llama(overrides):
    model = CoLM(tiny_config(**overrides)).init_weights(std=0.2, seed=3).eval()
    ids = torch.randint(0, 97, (2, 40))  # longer than the scaling's original context
    with torch.no_grad():
        ours = model(ids)
        theirs = as_transformers(model)(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_air_chain_one_is_a_plain_gqa_llama():
    model = tiny_model(kv_share=True, heads=[4, 2, 4], kv_heads=[2, 0, 0])
    chain1 = first_chains_model(model, 1)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        theirs = as_transformers(chain1)(ids).logits
        assert (model(ids, chains=1) - theirs).abs().max().item() <= 1e-5
