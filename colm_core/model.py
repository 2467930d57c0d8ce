"""CoLM: a Llama-style Transformer whose hidden state is split into chains (docs/spec.md sections 2-4).

Everything here is an ordinary Llama except two layers that carry the chain rule:
ChainLinear (output chain i reads input chains 1..i) and ChainRMSNorm (statistics per chain).
Every parameter is one chain's block: `<module>.weights.<c>` belongs to chain c + 1.
`model(ids, chains=k)` runs only the first k chains and returns the k-chain sub-model's logits.

Shapes: B batch, T new tokens, S cached + new tokens, H query heads of the first k chains,
KV key/value heads, hd head_dim, D hidden width of the first k chains, V vocabulary.
"""

from __future__ import annotations

import functools
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from colm_core.config import INIT_STD, ColmConfig
from colm_core.errors import ColmError
from colm_kernels.chain_linear import chain_linear
from colm_kernels.chain_rmsnorm import chain_rms_norm

# Modules take their first k chains' parameters as list(params.parameters())[:k]: slicing a
# ParameterList builds a new ParameterList module, which costs more than a decode step's matmuls,
# and indexing it goes through string keys, which costs as much as a small op.


class ChainLinear(nn.Module):
    """y_i = W_i x_{<=i}; weights[i] has shape (out_i, in_1 + ... + in_i). No bias."""

    def __init__(self, in_widths: list[int], out_widths: list[int]):
        super().__init__()
        prefix = [sum(in_widths[: i + 1]) for i in range(len(out_widths))]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(o, p)) for o, p in zip(out_widths, prefix))

    def forward(self, x: torch.Tensor, chains: int) -> torch.Tensor:
        return chain_linear(x, list(self.weights.parameters())[:chains])


class ChainRMSNorm(nn.Module):
    def __init__(self, widths: list[int], eps: float):
        super().__init__()
        self.eps = eps
        self.weights = nn.ParameterList(nn.Parameter(torch.ones(w)) for w in widths)

    def forward(self, x: torch.Tensor, chains: int) -> torch.Tensor:
        return chain_rms_norm(x, list(self.weights.parameters())[:chains], self.eps)


def rope_inv_freq(cfg: ColmConfig) -> torch.Tensor:
    """Llama RoPE frequencies, with Llama-3 long-context scaling when configured, on the default device.

    Computed on the CPU and then moved: on the meta device (expected_shapes) arange would first import
    torch's symbolic-shape machinery, seconds added to every command that opens a checkpoint."""
    positions = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device="cpu")
    inv_freq = 1.0 / (cfg.rope_theta ** (positions.float() / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq.to(torch.get_default_device())
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
    smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
        s["high_freq_factor"] - s["low_freq_factor"]
    )
    smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled).to(torch.get_default_device())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def kv_heads_read(cfg: ColmConfig) -> list[int]:
    """For every query head (chain-major order), the key/value head it reads.

    Chain i groups its query heads over its own KV heads as Llama does; with CoLM-Air every
    chain groups its query heads over chain 1's shared KV heads.
    """
    index, kv_offset = [], 0
    for c, h in enumerate(cfg.heads):
        n_kv = cfg.kv_heads[0] if cfg.kv_share else cfg.kv_heads[c]
        index += [kv_offset + j // (h // n_kv) for j in range(h)]
        if not cfg.kv_share:
            kv_offset += n_kv
    return index


def sdpa_can_group(index: list[int]) -> bool:
    """Whether query head j reads KV head j // (H / KV): the grouping scaled_dot_product_attention
    does itself (enable_gqa), without materialising repeated keys and values."""
    h, n_kv = len(index), max(index) + 1
    return h % n_kv == 0 and index == [j // (h // n_kv) for j in range(h)]


class Attention(nn.Module):
    def __init__(self, cfg: ColmConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.chain_widths
        self.q = ChainLinear(d, d)
        self.k = ChainLinear(d[: len(cfg.kv_widths)], cfg.kv_widths)
        self.v = ChainLinear(d[: len(cfg.kv_widths)], cfg.kv_widths)
        self.o = ChainLinear(d, d)
        index = kv_heads_read(cfg)
        self.register_buffer("kv_index", torch.tensor(index), persistent=False)
        # Per chain count k (1-based): whether SDPA can group the first k chains' query heads itself once
        # they are ordered so that the heads of each KV head sit next to each other, and whether that
        # order differs from chain-major order. With CoLM-Air every chain spreads its heads over chain
        # 1's KV heads, so chain-major order interleaves them ([0, 1, 0, 1] for 2 chains over 2 KV
        # heads). query_orders[k] holds the order and its inverse, padded to all heads (a buffer, so
        # that it moves with the model and a decode step copies nothing from the host).
        self.reorder, self.sdpa_groups = [False], [None]
        query_orders = torch.zeros(cfg.n_chains + 1, 2, len(index), dtype=torch.long)
        for k in range(1, cfg.n_chains + 1):
            read = index[: sum(cfg.heads[:k])]
            order = sorted(range(len(read)), key=read.__getitem__)  # stable: keeps chain-major ties
            self.sdpa_groups.append(sdpa_can_group([read[j] for j in order]))
            self.reorder.append(self.sdpa_groups[k] and order != sorted(order))
            query_orders[k, 0, : len(read)] = torch.tensor(order)
            # The inverse in Python: argsort on the meta device (expected_shapes) imports sympy, a second.
            query_orders[k, 1, : len(read)] = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
        self.register_buffer("query_orders", query_orders, persistent=False)

    def forward(self, x, chains, cos, sin, cache=None, layer=0, mask=None, at=0):
        """`mask` (B, 1, T, S), True where a query may attend, is needed whenever the plain causal
        rule (no mask: T == S, causal; T == 1, everything cached) does not hold. `at`: the cache
        columns the new tokens fill (see CoLM.hidden_states)."""
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        kv_chains = 1 if self.cfg.kv_share else chains
        q = self.q(x, chains).view(B, T, -1, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x, kv_chains).view(B, T, -1, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v(x, kv_chains).view(B, T, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v, at)  # (B, KV, S, hd)
        H = q.shape[1]
        if self.reorder[chains]:  # move the query heads, not the (much larger) cached keys and values
            q = q.index_select(1, self.query_orders[chains, 0, :H])
        elif not self.sdpa_groups[chains]:
            index = self.kv_index[:H]
            k, v = k.index_select(1, index), v.index_select(1, index)  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and k.shape[2] == T, enable_gqa=self.sdpa_groups[chains]
        )
        if self.reorder[chains]:
            y = y.index_select(1, self.query_orders[chains, 1, :H])
        return self.o(y.transpose(1, 2).reshape(B, T, -1), chains)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ColmConfig):
        super().__init__()
        d = cfg.chain_widths
        self.gate = ChainLinear(d, cfg.ffn)
        self.up = ChainLinear(d, cfg.ffn)
        self.down = ChainLinear(cfg.ffn, d)
        self.ffn = cfg.ffn

    def forward(self, x, chains):
        # SiLU chain block by chain block: its vectorised CPU kernel rounds an element differently
        # depending on the tensor's size and layout, so one call over all chains would let a later
        # chain change an earlier chain's last bits, and the sub-model would not be bitwise the prefix.
        gate = self.gate(x, chains).split(self.ffn[:chains], dim=-1)
        hidden = torch.cat([F.silu(g.contiguous()) for g in gate], dim=-1) * self.up(x, chains)
        return self.down(hidden, chains)


class Block(nn.Module):
    def __init__(self, cfg: ColmConfig):
        super().__init__()
        self.attn_norm = ChainRMSNorm(cfg.chain_widths, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = ChainRMSNorm(cfg.chain_widths, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, chains, cos, sin, cache=None, layer=0, mask=None, at=0):
        x = x + self.attn(self.attn_norm(x, chains), chains, cos, sin, cache, layer, mask, at)
        return x + self.ffn(self.ffn_norm(x, chains), chains)


class CoLM(nn.Module):
    """A Chain-of-Model LM. It also carries what a checkpoint stores beside the weights: the tokenizer that
    encodes its text (None for a bare model) and the history of commands that made it (saved with it)."""

    def __init__(self, cfg: ColmConfig, tokenizer=None, history: list[dict] = ()):
        super().__init__()
        self.config = cfg.validate()
        self.tokenizer = tokenizer
        self.history = list(history)
        self.embed = nn.ParameterList(nn.Parameter(torch.empty(cfg.vocab_size, d)) for d in cfg.chain_widths)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = ChainRMSNorm(cfg.chain_widths, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.ParameterList(nn.Parameter(torch.empty(cfg.vocab_size, d)) for d in cfg.chain_widths)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def head_blocks(self, chains: int | None = None) -> list[torch.Tensor]:
        """The LM head's per-chain column blocks H_i (V, d_i)."""
        blocks = self.embed if self.config.tie_embeddings else self.lm_head
        return list(blocks.parameters())[: chains or self.config.n_chains]

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """RoPE cos and sin, (..., hd), of positions of any shape."""
        freqs = positions.float()[..., None] * self.inv_freq  # (..., hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def hidden_states(
        self, input_ids: torch.Tensor, chains: int | None = None, cache=None, at: int | torch.Tensor = 0
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) final-normed hidden state of the first `chains` chains.

        With a cache (colm_core/generation.py KVCache), the new tokens fill its columns `at`: an int is
        the first of T consecutive columns (the step attends over the filled columns only: the fewest
        operations); a (T,) device tensor holds the columns themselves (every step keeps its shapes and
        reads no host state: what a captured graph needs). The cache's bookkeeping is the caller's."""
        k = self._chains(chains)
        # RoPE would go on silently past the positions the model was trained for. With a cache, generation
        # stops each row at its own context; rows of a batch that already stopped are still fed (and
        # discarded) while the others run, so the cache's columns may pass max_seq_len.
        if cache is None and input_ids.shape[1] > self.config.max_seq_len:
            raise ColmError(
                f"{input_ids.shape[1]} tokens is longer than the model's context "
                f"(max_seq_len {self.config.max_seq_len}); shorten the input"
            )
        x = torch.cat([F.embedding(input_ids, w) for w in list(self.embed.parameters())[:k]], dim=-1)
        if cache is None:
            cos, sin = self.rope(torch.arange(input_ids.shape[1], device=input_ids.device), x.dtype)
            mask = None
        else:  # the cache knows each row's positions and which cached keys each new token may see
            cos, sin, mask = cache.prepare(at, input_ids.shape[1])
        for i, layer in enumerate(self.layers):
            x = layer(x, k, cos, sin, cache, i, mask, at)
        return self.norm(x, k)

    def logits(self, h: torch.Tensor, chains: int | None = None, head: torch.Tensor | None = None) -> torch.Tensor:
        """logits_k = sum_{i<=k} h_i H_i^T, accumulated chain by chain (docs/spec.md section 3).

        `head`: the blocks joined once into one (V, D) matrix (packed_head); the k-chain head is then its
        first D_k columns, a view, and the logits one matrix product instead of k."""
        if head is not None:
            return F.linear(h, head[:, : h.shape[-1]])
        out, start = None, 0
        for w in self.head_blocks(chains):
            part = F.linear(h[..., start : start + w.shape[1]], w)
            out = part if out is None else out + part
            start += w.shape[1]
        return out

    def packed_head(self) -> torch.Tensor:
        """The LM head's blocks side by side, (V, D): a copy, built once by whoever runs many steps."""
        return torch.cat(self.head_blocks(), dim=1)

    def forward(self, input_ids: torch.Tensor, chains: int | None = None, cache=None) -> torch.Tensor:
        """(B, T) -> (B, T, V) logits of the `chains`-chain sub-model (default: all chains)."""
        return self.logits(self.hidden_states(input_ids, chains, cache), chains)

    def _chains(self, chains: int | None) -> int:
        n = self.config.n_chains
        if chains is None:
            return n
        if not 1 <= chains <= n:
            raise ColmError(f"chains={chains} is outside 1..{n}: this model has {n} chains")
        return chains

    @torch.no_grad()
    def init_weights(self, std: float = INIT_STD, seed: int = 0) -> CoLM:
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            p.copy_(initial_value(name, p.shape, std, self.config.n_layers, g))
        return self

    def num_parameters(self, chain: int | None = None) -> int:
        """All parameters, or those owned by one chain (1-based)."""
        return sum(p.numel() for name, p in self.named_parameters() if chain is None or chain_of(name) == chain)


def lateral_blocks(model: CoLM, k: int) -> list[tuple[nn.Parameter, int]]:
    """(weight, columns) for every chain-linear weight of a chain after k: its first `columns` columns are
    the block by which that chain reads chains 1..k. Norms, embeddings and LM-head blocks are per chain."""
    blocks = []
    for module in model.modules():
        if isinstance(module, ChainLinear):
            weights = list(module.weights.parameters())
            blocks += [(w, weights[k - 1].shape[1]) for w in weights[k:]]
    return blocks


def initial_value(name: str, shape, std: float, n_layers: int, generator: torch.Generator) -> torch.Tensor:
    """Llama-style init of one tensor: ones for norm gains, N(0, std) for projections and embeddings,
    std/sqrt(2 * layers) for the projections that write into the residual stream."""
    if "norm" in name:
        return torch.ones(shape)
    residual = ".attn.o." in name or ".ffn.down." in name
    return torch.randn(shape, generator=generator) * (std / math.sqrt(2 * n_layers) if residual else std)


def chain_of(tensor_name: str) -> int:
    """The (1-based) chain that owns a tensor: the last component of its name is the 0-based index."""
    return int(tensor_name.rsplit(".", 1)[1]) + 1


def expected_shapes(cfg: ColmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of this config has, by name, from the model definition itself."""
    return dict(shapes_of_config(cfg.to_json()))


@functools.lru_cache(maxsize=16)
def shapes_of_config(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """expected_shapes by the config's JSON: building the model on the meta device takes a tenth of a second
    at 1B parameters, and opening, checking and writing one checkpoint asks for its shapes several times."""
    with torch.device("meta"):
        return tuple(
            (name, tuple(t.shape))
            for name, t in CoLM(ColmConfig.from_dict(json.loads(config_json))).state_dict().items()
        )
