"""The model card (README.md) written into every checkpoint and uploaded by `colm push`.

Its YAML header is the metadata the Hugging Face Hub reads (library, tags, license, base model);
the body describes the chains and the evaluations recorded in the checkpoint's history.
"""

from __future__ import annotations

from huggingface_hub import ModelCardData

from colm_core.config import ColmConfig
from colm_core.references import hub_repo_of


def parameters_per_chain(cfg: ColmConfig) -> list[int]:
    """Parameters owned by each chain, counted from the tensor shapes the config implies."""
    from math import prod

    from colm_core.model import chain_of, expected_shapes  # torch: only when a card is written

    counts = [0] * cfg.n_chains
    for name, shape in expected_shapes(cfg).items():
        counts[chain_of(name) - 1] += prod(shape)
    return counts


def base_models(history: list[dict]) -> list[str]:
    """Hub repos this model was derived from: inputs recorded as `hf://` references or Hub-cache paths."""
    repos: list[str] = []
    for entry in history:
        if entry.get("command") == "eval":  # evaluating a model does not derive one from it
            continue
        refs = [i.get("path", "") for i in entry.get("inputs", [])]
        refs += [v for v in entry.get("args", {}).values() if isinstance(v, str)]
        for repo in filter(None, map(hub_repo_of, refs)):
            if repo not in repos:
                repos.append(repo)
    return repos


def recorded_license(history: list[dict]) -> str | None:
    """The latest license a command recorded (e.g. the one of an imported Hub model)."""
    for entry in reversed(history):
        license = entry.get("license") or entry.get("args", {}).get("license")
        if license:
            return license
    return None


def card_metadata(cfg: ColmConfig, history: list[dict], license: str | None = None) -> ModelCardData:
    tags = ["colm", "chain-of-model"] + (["colm-air"] if cfg.kv_share else [])
    bases = base_models(history)
    return ModelCardData(
        library_name="colm",
        pipeline_tag="text-generation",
        tags=tags,
        license=license or recorded_license(history),
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
    )


def _metrics(record: dict) -> dict[str, dict[int, float]]:
    """{metric: {chains: value}} from {"val_loss": {"1": 2.1, ...}, ...} or an eval report {"results": [{"chains": 1, ...}]}."""
    metrics: dict[str, dict[int, float]] = {}
    for row in record.get("results", []):
        for metric, value in row.items():
            if metric != "chains" and isinstance(value, (int, float)):
                metrics.setdefault(metric, {})[int(row["chains"])] = value
    for metric, by_chains in record.items():
        if isinstance(by_chains, dict) and all(str(k).isdigit() for k in by_chains):
            metrics[metric] = {int(k): v for k, v in by_chains.items()}
    return metrics


def recorded_evaluations(history: list[dict]) -> list[tuple[dict, dict[str, dict[int, float]]]]:
    """(entry, {metric: {chains: value}}) for every history entry that recorded evaluation results:
    under "eval" (e.g. a training run's validation), or an `eval` entry's report "results"."""
    found = []
    for entry in history:
        metrics = _metrics(entry.get("eval") or {})
        if entry.get("command") == "eval":
            metrics = {**_metrics({"results": entry.get("results", [])}), **metrics}
        if metrics:
            found.append((entry, metrics))
    return found


def evaluation_lines(history: list[dict]) -> list[str]:
    evaluations = recorded_evaluations(history)
    if not evaluations:
        return []
    names = list(dict.fromkeys(m for _, metrics in evaluations for m in metrics))
    lines = [
        "## Evaluation",
        "",
        "As recorded in the history, on the data each command was given.",
        "",
        "| recorded by | chains | " + " | ".join(names) + " |",
        "| --- | --- |" + " --- |" * len(names),
    ]
    for entry, metrics in evaluations:
        source = f"`colm {entry['command']}` {entry.get('time', '')}".rstrip()
        for k in sorted({k for by_chains in metrics.values() for k in by_chains}):
            values = [metrics.get(m, {}).get(k) for m in names]
            cells = ["" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
            lines.append(f"| {source} | {k} | " + " | ".join(cells) + " |")
    return lines + [""]


def model_card(cfg: ColmConfig, history: list[dict], license: str | None = None) -> str:
    per_chain = parameters_per_chain(cfg)
    kind = "CoLM-Air (keys/values from chain 1, shared by every chain)" if cfg.kv_share else "CoLM"
    lines = [
        "---",
        card_metadata(cfg, history, license).to_yaml(),
        "---",
        "",
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
    lines += [
        "",
        f"Vocabulary {cfg.vocab_size} ({cfg.tokenizer} tokenizer), head_dim {cfg.head_dim}, "
        f"RoPE theta {cfg.rope_theta:g}, max sequence length {cfg.max_seq_len}, "
        f"tied embeddings: {'yes' if cfg.tie_embeddings else 'no'}.",
        "",
    ]
    lines += evaluation_lines(history) + ["## Provenance", ""]
    if history:
        for entry in history:
            args = ", ".join(f"{k}={v}" for k, v in entry.get("args", {}).items() if v is not None)
            lines.append(f"- {entry.get('time', '?')}: `colm {entry['command']}` {args}".rstrip())
    else:
        lines.append("- (no recorded history)")
    return "\n".join(lines) + "\n"
