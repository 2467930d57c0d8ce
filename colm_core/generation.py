"""Text generation: a KV cache, sampling, CoLM-Air prefill with chain 1, and chain-count switching.

A *schedule* says which k-chain sub-model produces each generated token: [(0, 4), (32, 1)] means
tokens 0..31 come from 4 chains and tokens from 32 on from 1 chain. Whatever the cache does, token p
is what that sub-model computes from the whole sequence so far (tests/test_generate.py checks this
against full recomputation without a cache).

Why the cache can be reused across chain counts (SPEC.md sections 3-4):
- CoLM-Air: keys and values come from chain 1 alone, so the cache is the same for every chain count.
  The prompt's cache can be built with chain 1 only, and switching is free.
- CoLM: chain i's KV heads depend only on chains <= i, so the cache of k chains is the first
  sum(kv_heads[:k]) heads of the cache of more chains: switching down keeps a prefix. Switching up
  needs the new chains' keys and values at every earlier position, which depend on the new chains'
  hidden states at every layer, so the whole sequence so far is run again at the new chain count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from colm_core.errors import ColmError
from colm_core.options import AT_LEAST_ONE, NON_NEGATIVE, TOP_P, check_range

Schedule = list[tuple[int, int]]  # (first generated position, chains), positions strictly increasing from 0


def kv_heads_needed(cfg, chains: int) -> int:
    """KV heads the attention of the first `chains` chains reads."""
    return cfg.kv_heads[0] if cfg.kv_share else sum(cfg.kv_heads[:chains])


class KVCache:
    """Keys and values of every layer, preallocated as (B, KV, capacity, head_dim) and filled left to right.

    Implements the protocol the attention calls (colm_core/model.py): `length` (the RoPE start of the
    new tokens), `update(layer, k, v)` and `advance(T)`. A step run with fewer chains than the cache
    holds (CoLM without Air) writes only a prefix of the heads; `complete_heads` is how many heads
    are valid at every cached position, i.e. the most chains the cache can serve without recomputing.
    """

    def __init__(self, cfg, kv_heads: int, capacity: int, batch: int = 1, dtype=torch.float32, device="cpu"):
        shape = (batch, kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.capacity = capacity
        self.length = 0
        self.complete_heads = kv_heads
        self._written_heads = kv_heads

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads, start, end = k.shape[1], self.length, self.length + k.shape[2]
        if end > self.capacity or heads > self.keys[layer].shape[1]:
            raise ColmError(f"KV cache holds {self.keys[layer].shape[1]} heads x {self.capacity} positions; "
                            f"cannot add {heads} heads at positions {start}..{end - 1}")
        self.keys[layer][:, :heads, start:end] = k
        self.values[layer][:, :heads, start:end] = v
        self._written_heads = heads
        return self.keys[layer][:, :heads, :end], self.values[layer][:, :heads, :end]

    def advance(self, tokens: int) -> None:
        self.length += tokens
        self.complete_heads = min(self.complete_heads, self._written_heads)

    def reset(self) -> None:
        self.length = 0
        self.complete_heads = self._written_heads = self.keys[0].shape[1]


@dataclass
class Sampling:
    """temperature 0 is greedy; top_k / top_p restrict sampling to the most likely tokens."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def validate(self) -> "Sampling":
        check_range("--temperature", self.temperature, NON_NEGATIVE, "0 is greedy")
        check_range("--seed", self.seed, NON_NEGATIVE, "seed of the sampler")
        if self.top_k is not None:
            check_range("--top-k", self.top_k, AT_LEAST_ONE, "sample among the k most likely tokens")
        if self.top_p is not None:
            check_range("--top-p", self.top_p, TOP_P, "sample among the most likely tokens of mass p")
        restricted = [f"--top-{name} {value:g}" for name, value in (("k", self.top_k), ("p", self.top_p))
                      if value is not None]
        if restricted and self.temperature == 0:
            raise ColmError(f"{' and '.join(restricted)} has no effect at temperature 0 (greedy decoding); "
                            "give --temperature above 0 to sample, or leave it out")
        return self

    def pick(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        """One token id from (V,) next-token logits."""
        if self.temperature == 0:
            return int(logits.argmax())
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.numel():
            kth_largest = logits.topk(self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(descending=True)
            probs = sorted_logits.softmax(-1)
            # Keep the most likely tokens until their mass reaches top_p (always at least one).
            outside = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.index_fill(0, order[outside], float("-inf"))
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=generator))


def chains_at(schedule: Schedule, position: int) -> int:
    return next(k for start, k in reversed(schedule) if start <= position)


def parse_switch(text: str) -> Schedule:
    """"0:4,32:1,64:2" -> [(0, 4), (32, 1), (64, 2)]."""
    entries = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            position, chains = (int(v) for v in part.split(":"))
        except ValueError:
            raise ColmError(f"--switch {text!r}: expected POSITION:CHAINS pairs, e.g. 0:4,32:1,64:2") from None
        entries.append((position, chains))
    return entries


def make_schedule(n_chains: int, chains: int | None = None, switch: Schedule = ()) -> Schedule:
    """The schedule from a starting chain count (default: all) and switch points; checked."""
    switch = list(switch)
    schedule = switch if switch and switch[0][0] == 0 else [(0, n_chains if chains is None else chains)] + switch
    for i, (position, k) in enumerate(schedule):
        if not 1 <= k <= n_chains:
            raise ColmError(f"chains {k} is outside 1..{n_chains}: this model has {n_chains} chains")
        if position < 0 or (i and position <= schedule[i - 1][0]):
            raise ColmError(f"switch schedule {', '.join(f'{p}:{c}' for p, c in schedule)} is not increasing; "
                            "give generated positions in increasing order, e.g. 0:4,32:1,64:2")
    return schedule


def check_prompt(cfg, prompt_ids: list[int]) -> None:
    if not prompt_ids:
        raise ColmError("the prompt is empty; give some text to continue")
    if len(prompt_ids) > cfg.max_seq_len:
        raise ColmError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of "
                        f"{cfg.max_seq_len}; shorten it")
    bad = [i for i in prompt_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ColmError(f"prompt token id {bad[0]} is outside the vocabulary 0..{cfg.vocab_size - 1}")


def default_prefill_chains(cfg, schedule: Schedule) -> int:
    """Air builds the prompt's cache with chain 1; CoLM needs the first segment's chains."""
    return 1 if cfg.kv_share else schedule[0][1]


@torch.inference_mode()  # on a generator function: active only while the generator itself runs
def stream_tokens(model, prompt_ids: list[int], schedule: Schedule, max_new_tokens: int,
                  prefill_chains: int | None = None, sampling: Sampling | None = None,
                  report: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token id, next-token logits) for each generated token, up to max_new_tokens or the context.

    The prompt's tokens but the last run once at `prefill_chains` only to fill the cache; the last
    prompt token runs at the first segment's chain count and gives the first token's logits. `report`
    receives "kv_cache" (its size) and "schedule": one dict per segment reached, "recomputed" saying
    whether the cache had to be rebuilt for it.
    """
    cfg = model.config
    sampling = (sampling or Sampling()).validate()
    check_prompt(cfg, prompt_ids)
    prefill_chains = default_prefill_chains(cfg, schedule) if prefill_chains is None else prefill_chains
    if not 1 <= prefill_chains <= cfg.n_chains:
        raise ColmError(f"prefill chains {prefill_chains} is outside 1..{cfg.n_chains}")
    if kv_heads_needed(cfg, prefill_chains) < kv_heads_needed(cfg, schedule[0][1]):
        raise ColmError(f"prefill with {prefill_chains} chains cannot serve {schedule[0][1]} chains: only "
                        "CoLM-Air models (keys/values from chain 1) can; omit --prefill-chains")
    param = next(model.parameters())
    ids = list(prompt_ids)
    n_new = min(max_new_tokens, cfg.max_seq_len - len(ids) + 1)  # the last token is never fed back
    heads = max(kv_heads_needed(cfg, k) for k in [prefill_chains] + [k for _, k in schedule])
    cache = KVCache(cfg, heads, len(ids) + n_new - 1, dtype=param.dtype, device=param.device)
    generator = torch.Generator(param.device).manual_seed(sampling.seed)
    segment_starts = dict(schedule)
    report = {} if report is None else report
    report["kv_cache"] = {"heads": heads, "positions": cache.capacity, "bytes": cache.nbytes}
    report["schedule"] = []

    def run(tokens: list[int], chains: int) -> torch.Tensor:
        return model.hidden_states(torch.tensor([tokens], device=param.device), chains, cache)

    if len(ids) > 1:
        run(ids[:-1], prefill_chains)
    pending = ids[-1:]
    for position in range(n_new):
        chains = chains_at(schedule, position)
        recompute = kv_heads_needed(cfg, chains) > cache.complete_heads
        if recompute:  # only CoLM without Air switching up: the new chains' keys/values are missing
            cache.reset()
            pending = ids
        if position in segment_starts:
            report["schedule"].append({"start": position, "chains": chains, "recomputed": recompute})
        h = run(pending, chains)
        logits = model.logits(h[0, -1], chains)
        token = sampling.pick(logits, generator)
        yield token, logits
        ids.append(token)
        pending = [token]


class TextStream:
    """Generated token ids -> text that is final: whole characters only (a multi-byte character split
    over tokens decodes as U+FFFD until complete) and nothing that could still begin a stop string."""

    def __init__(self, tokenizer, stop: list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # the text so far, a stop string and what follows it cut off
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the newly final text."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        hits = [self.text.find(s) for s in self.stop if s in self.text]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            return self._take(len(self.text))
        final = len(self.text.rstrip("\ufffd"))
        # Hold back a tail that may be the start of a stop string.
        final -= max((n for s in self.stop for n in range(1, len(s)) if self.text[:final].endswith(s[:n])),
                     default=0)
        return self._take(final)

    def finish(self) -> str:
        """Whatever was held back, now that no more tokens come."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def generate(model, prompt_ids: list[int], *, max_new_tokens: int = 128, chains: int | None = None,
             switch: Schedule = (), prefill_chains: int | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, stop: list[str] = (),
             eos_id: int | None = None, on_text: Callable[[str], None] | None = None) -> dict:
    """Continue `prompt_ids` and return a JSON-ready record: text, token ids, schedule, timings.

    Stops at EOS (default: the config's eos_token_id), at a stop string (cut from the text), after
    max_new_tokens, or at the model's context. `on_text` receives the text as it becomes final.
    """
    cfg = model.config
    if max_new_tokens < 1:
        raise ColmError(f"max new tokens {max_new_tokens}: must be at least 1")
    schedule = make_schedule(cfg.n_chains, chains, switch)
    sampling = Sampling(temperature, top_k, top_p, seed).validate()
    eos_id = cfg.eos_token_id if eos_id is None else eos_id
    prefill_chains = default_prefill_chains(cfg, schedule) if prefill_chains is None else prefill_chains
    text = TextStream(model.tokenizer, stop)
    emit = on_text or (lambda piece: None)
    tokens, report, stop_reason = [], {}, "max_new_tokens"
    start = time.perf_counter()
    first_token_at = None
    steps = stream_tokens(model, prompt_ids, schedule, max_new_tokens, prefill_chains, sampling, report)
    for token, _ in steps:
        first_token_at = first_token_at or time.perf_counter()
        tokens.append(token)
        if token == eos_id:
            stop_reason = "eos"
            break
        piece = text.push(token)
        if piece:
            emit(piece)
        if text.stopped:
            stop_reason = "stop_string"
            break
    else:
        if len(tokens) < max_new_tokens:
            stop_reason = "context"
    steps.close()
    end = time.perf_counter()
    rest = text.finish()
    if rest:
        emit(rest)
    ttft = first_token_at - start
    decode_seconds = end - first_token_at
    return {
        "prompt_tokens": len(prompt_ids),
        "text": text.text,
        "token_ids": tokens,
        "stop_reason": stop_reason,
        "prefill_chains": prefill_chains,
        **report,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed},
        "timings": {
            "time_to_first_token_s": ttft,
            "prefill_tokens_per_s": len(prompt_ids) / ttft,
            "decode_tokens_per_s": (len(tokens) - 1) / decode_seconds if len(tokens) > 1 else None,
            "total_s": end - start,
        },
    }
