"""Per-scale evaluation: loss, perplexity and bits per byte for each chain count, in one forward."""

from __future__ import annotations

import math
import time

import torch

from colm_core.errors import ColmError
from colm_core.losses import MultiScaleLoss
from colm_core.options import EVAL_SEQ_LEN, EvalOptions


def token_stream(tokenizer, texts: list[str]) -> list[int]:
    """Documents joined as [BOS] doc EOS [BOS] doc EOS ..., so every text token is a prediction target.

    Each document starts as the tokenizer starts a sequence (with BOS only if its policy adds one)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=True)
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
    return ids


def evaluate(
    model,
    texts: list[str],
    chains: list[int],
    seq_len: int = EVAL_SEQ_LEN,
    batch_size: int = EvalOptions.batch_size,
    max_tokens: int | None = None,
    progress=None,
) -> dict:
    """Mean next-token loss of each k-chain sub-model over the texts (see evaluate_tokens)."""
    return evaluate_tokens(
        model, token_stream(model.tokenizer, texts), chains, seq_len, batch_size, max_tokens, progress
    )


@torch.no_grad()
def evaluate_tokens(
    model,
    ids: list[int],
    chains: list[int],
    seq_len: int = EVAL_SEQ_LEN,
    batch_size: int = EvalOptions.batch_size,
    max_tokens: int | None = None,
    progress=None,
) -> dict:
    """Mean next-token loss of each k-chain sub-model over a token stream (BOS doc EOS ...).

    Windows of seq_len + 1 tokens overlap by one, so every token after the first is predicted
    exactly once. The loss is training's (MultiScaleLoss: every scale from one forward, the logits
    in chunks). bits/byte divides the summed loss (in bits) by the UTF-8 bytes of the targets,
    which makes models with different tokenizers comparable.
    """
    model.eval()
    device = next(model.parameters()).device
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    seq_len = min(seq_len, model.config.max_seq_len)
    windows = [ids[i : i + seq_len + 1] for i in range(0, len(ids) - 1, seq_len)]
    if not windows:
        raise ColmError("the evaluation data is shorter than two tokens; give more text")
    chains = sorted(chains)
    loss = MultiScaleLoss(model, chains)
    nll = torch.zeros(len(chains), dtype=torch.float64)
    n_tokens = n_bytes = 0
    start = time.perf_counter()
    # Full windows go in batches; the shorter tail window, if any, goes alone.
    batches = [windows[b : b + batch_size] for b in range(0, len(windows), batch_size)]
    if len(batches[-1][-1]) != len(batches[0][0]):
        batches[-1:] = [batches[-1][:-1], batches[-1][-1:]] if len(batches[-1]) > 1 else [batches[-1]]
    for batch in batches:
        xy = torch.tensor(batch, device=device)
        x, y = xy[:, :-1], xy[:, 1:]
        nll += loss(x, y).per_scale.double().cpu()
        n_tokens += y.numel()
        n_bytes += sum(model.tokenizer.byte_length(w[1:]) for w in batch)
        if progress is not None:
            progress(n_tokens)
    elapsed = time.perf_counter() - start
    results = []
    for k, total in zip(chains, nll.tolist()):
        mean = total / max(n_tokens, 1)
        results.append(
            {
                "chains": k,
                "loss": mean,
                "ppl": math.exp(min(mean, 700.0)),
                "bits_per_byte": total / math.log(2) / max(n_bytes, 1),
            }
        )
    return {
        "results": results,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "seconds": elapsed,
        "tokens_per_second": n_tokens / elapsed if elapsed > 0 else None,
    }
