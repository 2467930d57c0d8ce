"""The model card (README.md) written into every checkpoint."""

from __future__ import annotations

from colm_core.config import ColmConfig


def parameters_per_chain(cfg: ColmConfig) -> list[int]:
    """Parameters owned by each chain, counted from the tensor shapes the config implies."""
    from math import prod

    from colm_core.checkpoint import expected_shapes
    from colm_core.model import chain_of

    counts = [0] * cfg.n_chains
    for name, shape in expected_shapes(cfg).items():
        counts[chain_of(name) - 1] += prod(shape)
    return counts


def model_card(cfg: ColmConfig, history: list[dict]) -> str:
    per_chain = parameters_per_chain(cfg)
    kind = "CoLM-Air (keys/values from chain 1, shared by every chain)" if cfg.kv_share else "CoLM"
    lines = [
        "# A Chain-of-Model language model",
        "",
        f"A {kind} with {cfg.n_chains} chains, {cfg.n_layers} layers and {sum(per_chain):,} parameters, "
        "made with [colm](https://arxiv.org/abs/2505.11820). The first k chains form a complete "
        "k-chain sub-model: `colm slice --chains K` extracts it, `colm eval --chains K` measures it.",
        "",
        "| chain | query heads | KV heads | FFN units | hidden width | parameters | sub-model parameters |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    running = 0
    for i, (h, kv, f, n) in enumerate(zip(cfg.heads, cfg.kv_heads, cfg.ffn, per_chain), start=1):
        running += n
        lines.append(f"| {i} | {h} | {kv} | {f} | {h * cfg.head_dim} | {n:,} | {running:,} |")
    lines += ["", f"Vocabulary {cfg.vocab_size} ({cfg.tokenizer} tokenizer), head_dim {cfg.head_dim}, "
              f"RoPE theta {cfg.rope_theta:g}, max sequence length {cfg.max_seq_len}, "
              f"tied embeddings: {'yes' if cfg.tie_embeddings else 'no'}.", "", "## Provenance", ""]
    if history:
        for entry in history:
            args = ", ".join(f"{k}={v}" for k, v in entry.get("args", {}).items() if v is not None)
            lines.append(f"- {entry.get('time', '?')}: `colm {entry['command']}` {args}".rstrip())
    else:
        lines.append("- (no recorded history)")
    return "\n".join(lines) + "\n"
