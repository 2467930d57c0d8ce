"""A Chain-of-Model language model (CoLM, arXiv 2505.11820) for `transformers`, self-contained.

Shipped by `colm export --format hf` beside the weights and loaded with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`. It imports only torch and
transformers, so the export works without colm installed.

Chains: the hidden state is split into chains; output chain i of every layer reads input chains
1..i only, so the first k chains form a complete k-chain sub-model. `config.chains` (default: all)
picks the sub-model that `forward` runs; `forward(..., chains=k)` overrides it per call.
The weights keep colm's names: `<module>.weights.<c>` is chain c + 1's block.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class ColmHFConfig(PretrainedConfig):
    """`colm` holds colm's own config.json fields; the standard fields are derived from it."""

    model_type = "colm"

    def __init__(self, colm: dict | None = None, chains: int | None = None, **kwargs):
        self.colm = dict(
            colm or {"vocab_size": 258, "n_layers": 1, "head_dim": 8, "heads": [1], "kv_heads": [1], "ffn": [8]}
        )
        c = self.colm
        self.chains = chains or len(c["heads"])
        self.vocab_size = c["vocab_size"]
        self.num_hidden_layers = c["n_layers"]
        self.hidden_size = sum(c["heads"]) * c["head_dim"]
        self.max_position_embeddings = c.get("max_seq_len", 2048)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(name, c.get(name))
        kwargs["tie_word_embeddings"] = False  # tied CoLMs have no lm_head tensor: the head reads embed
        super().__init__(**kwargs)


class ChainLinear(nn.Module):
    """y_i = W_i x_{<=i}; weights[i] has shape (out_i, in_1 + ... + in_i)."""

    def __init__(self, in_widths, out_widths):
        super().__init__()
        prefix = [sum(in_widths[: i + 1]) for i in range(len(out_widths))]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(o, p)) for o, p in zip(out_widths, prefix))

    def forward(self, x, chains):
        return torch.cat([F.linear(x[..., : w.shape[1]], w) for w in list(self.weights)[:chains]], dim=-1)


class ChainRMSNorm(nn.Module):
    """RMSNorm with statistics over each chain's own slice (in fp32, as Llama computes it)."""

    def __init__(self, widths, eps):
        super().__init__()
        self.eps = eps
        self.weights = nn.ParameterList(nn.Parameter(torch.ones(w)) for w in widths)

    def forward(self, x, chains):
        out, start = [], 0
        for w in list(self.weights)[:chains]:
            xi = x[..., start : start + w.shape[0]].float()
            xi = xi * torch.rsqrt(xi.pow(2).mean(-1, keepdim=True) + self.eps)
            out.append(w * xi.to(x.dtype))
            start += w.shape[0]
        return torch.cat(out, dim=-1)


def rope_inv_freq(c: dict) -> torch.Tensor:
    """Llama RoPE frequencies, with Llama-3 scaling when configured."""
    hd = c["head_dim"]
    inv_freq = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    s = c.get("rope_scaling")
    if not s:
        return inv_freq
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
    smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
        s["high_freq_factor"] - s["low_freq_factor"]
    )
    smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def kv_head_index(c: dict) -> list[int]:
    """For every query head (chain-major), the key/value head it reads (Air: chain 1's heads)."""
    index, offset = [], 0
    for i, h in enumerate(c["heads"]):
        n_kv = c["kv_heads"][0] if c.get("kv_share") else c["kv_heads"][i]
        index += [offset + j // (h // n_kv) for j in range(h)]
        if not c.get("kv_share"):
            offset += n_kv
    return index


class Attention(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.c = c
        d = [h * c["head_dim"] for h in c["heads"]]
        kv = [k * c["head_dim"] for k in (c["kv_heads"][:1] if c.get("kv_share") else c["kv_heads"])]
        self.q, self.o = ChainLinear(d, d), ChainLinear(d, d)
        self.k, self.v = ChainLinear(d[: len(kv)], kv), ChainLinear(d[: len(kv)], kv)
        self.kv_index = kv_head_index(c)

    def forward(self, x, chains, cos, sin, mask):
        B, T, _ = x.shape
        hd = self.c["head_dim"]
        kv_chains = 1 if self.c.get("kv_share") else chains
        q = self.q(x, chains).view(B, T, -1, hd).transpose(1, 2)
        k = self.k(x, kv_chains).view(B, T, -1, hd).transpose(1, 2)
        v = self.v(x, kv_chains).view(B, T, -1, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        index = torch.tensor(self.kv_index[: q.shape[1]], device=x.device)
        k, v = k.index_select(1, index), v.index_select(1, index)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, T, -1), chains)


class SwiGLU(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        d = [h * c["head_dim"] for h in c["heads"]]
        self.gate, self.up, self.down = ChainLinear(d, c["ffn"]), ChainLinear(d, c["ffn"]), ChainLinear(c["ffn"], d)

    def forward(self, x, chains):
        return self.down(F.silu(self.gate(x, chains)) * self.up(x, chains), chains)


class Block(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        d = [h * c["head_dim"] for h in c["heads"]]
        eps = c.get("norm_eps", 1e-5)
        self.attn_norm, self.attn = ChainRMSNorm(d, eps), Attention(c)
        self.ffn_norm, self.ffn = ChainRMSNorm(d, eps), SwiGLU(c)

    def forward(self, x, chains, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x, chains), chains, cos, sin, mask)
        return x + self.ffn(self.ffn_norm(x, chains), chains)


class ColmPreTrainedModel(PreTrainedModel):
    config_class = ColmHFConfig
    base_model_prefix = "colm"
    _no_split_modules = ["Block"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Only for tensors a checkpoint lacks: norm gains one, the rest N(0, 0.02) as colm initialises."""
        if isinstance(module, ChainRMSNorm):
            for p in module.weights:
                p.fill_(1.0)
        elif isinstance(module, ChainLinear):
            for p in module.weights:
                p.normal_(0.0, 0.02)
        elif isinstance(module, ColmForCausalLM):
            for p in [*module.embed, *getattr(module, "lm_head", [])]:
                p.normal_(0.0, 0.02)


class ColmForCausalLM(ColmPreTrainedModel, GenerationMixin):
    def __init__(self, config: ColmHFConfig):
        super().__init__(config)
        c = config.colm
        d = [h * c["head_dim"] for h in c["heads"]]
        self.embed = nn.ParameterList(nn.Parameter(torch.empty(c["vocab_size"], w)) for w in d)
        self.layers = nn.ModuleList(Block(c) for _ in range(c["n_layers"]))
        self.norm = ChainRMSNorm(d, c.get("norm_eps", 1e-5))
        if not c.get("tie_embeddings"):
            self.lm_head = nn.ParameterList(nn.Parameter(torch.empty(c["vocab_size"], w)) for w in d)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, chains=None, **kwargs):
        """Logits of the `chains`-chain sub-model (default config.chains). A 0/1 attention_mask marks
        padding; positions then count only real tokens, as for left-padded batches."""
        c = self.config.colm
        k = chains or self.config.chains
        if not 1 <= k <= len(c["heads"]):
            raise ValueError(f"chains={k} is outside 1..{len(c['heads'])}")
        B, T = input_ids.shape
        x = torch.cat([F.embedding(input_ids, w) for w in list(self.embed)[:k]], dim=-1)
        mask = None
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)[None].expand(B, T)
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=x.device)  # padding rows see themselves: no NaN
            mask = (causal & attention_mask[:, None, None, :].bool()) | eye
        freqs = position_ids.float()[..., None] * rope_inv_freq(c).to(x.device)  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, k, cos, sin, mask)
        h = self.norm(x, k)
        head = self.embed if c.get("tie_embeddings") else self.lm_head
        logits, start = None, 0
        for w in list(head)[:k]:  # logits_k = sum_{i<=k} h_i H_i^T
            part = F.linear(h[..., start : start + w.shape[1]], w)
            logits = part if logits is None else logits + part
            start += w.shape[1]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """No KV cache: every generation step recomputes the whole prefix."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}
