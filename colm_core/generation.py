"""Text generation: a KV cache, sampling, CoLM-Air prefill with chain 1, and chain-count switching.

A *schedule* says which k-chain sub-model produces each generated token: [(0, 4), (32, 1)] means
tokens 0..31 come from 4 chains and tokens from 32 on from 1 chain. Whatever the cache does, token p
is what that sub-model computes from the whole sequence so far (tests/test_generate.py checks this
against full recomputation without a cache).

Why the cache can be reused across chain counts (docs/spec.md sections 3-4):
- CoLM-Air: keys and values come from chain 1 alone, so the cache is the same for every chain count.
  The prompt's cache can be built with chain 1 only, and switching is free.
- CoLM: chain i's KV heads depend only on chains <= i, so the cache of k chains is the first
  sum(kv_heads[:k]) heads of the cache of more chains: switching down keeps a prefix. Switching up
  needs the new chains' keys and values at every earlier position, which depend on the new chains'
  hidden states at every layer, so the whole sequence so far is run again at the new chain count.

decode_step is one step as a pure function of its tensors; on CUDA the one-token steps run through
torch.compile, one CUDA graph per chain count (compile_step, docs/generation.md).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from colm_core.cache import cache_root
from colm_core.errors import ColmError, OptionError
from colm_core.options import GenerateOptions

Schedule = list[tuple[int, int]]  # (first generated position, chains), positions strictly increasing from 0


def kv_heads_needed(cfg, chains: int) -> int:
    """KV heads the attention of the first `chains` chains reads."""
    return cfg.kv_heads[0] if cfg.kv_share else sum(cfg.kv_heads[:chains])


class KVCache(nn.Module):
    """Keys and values of every layer in two registered buffers, (layers, B, KV, capacity, head_dim), filled
    left to right. Buffers, not Python lists: a captured graph reads and writes them at fixed addresses.

    Row b holds a prompt left-padded by pad[b] columns: the token in column j has RoPE position
    j - pad[b], and no query attends to a padding column (a padding query attends to itself alone,
    which keeps its values finite). Every row's RoPE table over all columns is computed once, here.

    The model calls `prepare(at, T)` (RoPE and attention mask of T new tokens filling columns `at`) and
    `update(layer, k, v, at)`; what `at` may be: CoLM.hidden_states. Nothing in a step touches the
    bookkeeping, which whoever runs the steps keeps between them with `record`: `length`, the filled
    columns, and `complete_heads`, how many heads are valid at every cached position, i.e. the most chains
    the cache can serve without recomputing (a step at fewer chains than the cache holds, CoLM without
    Air, writes only a prefix of the heads).
    """

    def __init__(self, model, kv_heads: int, capacity: int, pad: list[int] = (0,)):
        super().__init__()
        cfg, param = model.config, next(model.parameters())
        shape = (cfg.n_layers, len(pad), kv_heads, capacity, cfg.head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=param.dtype, device=param.device), persistent=False)
        self.register_buffer("values", torch.zeros_like(self.keys), persistent=False)
        self.register_buffer("pad", torch.zeros(len(pad), dtype=torch.long, device=param.device), persistent=False)
        self.register_buffer("columns", torch.arange(capacity, device=param.device), persistent=False)
        rope = torch.zeros(len(pad), 1, capacity, cfg.head_dim, dtype=param.dtype, device=param.device)
        self.register_buffer("cos", rope, persistent=False)  # (B, 1, capacity, hd)
        self.register_buffer("sin", rope.clone(), persistent=False)
        self.capacity = capacity
        self.in_use = False  # by a running stream_batch (see kept_cache)
        self.restart(model, pad)

    def restart(self, model, pad: list[int]) -> None:
        """Empty the cache for prompts left-padded by `pad`, in place: a captured graph keeps its addresses."""
        self.pad.copy_(torch.tensor(list(pad)))
        positions = (self.columns - self.pad[:, None]).clamp(min=0)  # (B, capacity)
        for table, values in zip((self.cos, self.sin), model.rope(positions, self.cos.dtype)):
            table.copy_(values[:, None])
        self.padded = any(pad)
        self.reset()

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def prepare(self, at: int | torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """RoPE cos and sin (B, 1, T, hd) of `tokens` new columns, and the attention mask (B, 1, T, S),
        True where a query may attend; None where the plain causal rule holds."""
        if isinstance(at, int):
            end = at + tokens
            if end > self.capacity:
                raise ColmError(f"KV cache holds {self.capacity} positions; cannot add positions {at}..{end - 1}")
            cos, sin = self.cos[:, :, at:end], self.sin[:, :, at:end]
            if not (self.padded or 1 < tokens and at):
                return cos, sin, None
            new, keys = self.columns[at:end], self.columns[:end]  # (T,), (S,)
        else:  # every column, masked past the filled ones: the shapes never change
            new, keys = at, self.columns
            cos, sin = self.cos.index_select(2, at), self.sin.index_select(2, at)
        visible = (keys <= new[:, None]) & (keys >= self.pad[:, None, None]) | (keys == new[:, None])
        return cos, sin, visible[:, None]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        heads = k.shape[1]
        if heads > self.keys.shape[2]:
            raise ColmError(f"KV cache holds {self.keys.shape[2]} heads; cannot add {heads}")
        keys, values = self.keys[layer, :, :heads], self.values[layer, :, :heads]
        if isinstance(at, int):
            end = at + k.shape[2]
            keys[:, :, at:end], values[:, :, at:end] = k, v
            return keys[:, :, :end], values[:, :, :end]
        keys.index_copy_(2, at, k)
        values.index_copy_(2, at, v)
        return keys, values

    def record(self, tokens: int, heads: int) -> None:
        """`tokens` more columns were filled, with `heads` heads."""
        self.length += tokens
        self.complete_heads = min(self.complete_heads, heads)

    def reset(self) -> None:
        self.length = 0
        self.complete_heads = self.keys.shape[2]


def extend(model, cache: KVCache, ids: torch.Tensor, chains: int) -> torch.Tensor:
    """Run new tokens (B, T) at `chains` chains into the cache's next columns and record them: (B, T, D)."""
    hidden = model.hidden_states(ids, chains, cache, cache.length)
    cache.record(ids.shape[1], kv_heads_needed(model.config, chains))
    return hidden


@dataclass
class Sampling:
    """temperature 0 is greedy; top_k / top_p restrict sampling to the most likely tokens."""

    temperature: float = GenerateOptions.temperature
    top_k: int | None = GenerateOptions.top_k
    top_p: float | None = GenerateOptions.top_p
    seed: int = GenerateOptions.seed

    @classmethod
    def of(cls, options: GenerateOptions) -> Sampling:
        return cls(options.temperature, options.top_k, options.top_p, options.seed)

    def validate(self) -> Sampling:
        """Checked as the options that set it are (a request to `colm serve` sets it too)."""
        GenerateOptions(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)
        return self

    def noise(self, rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor | None:
        """What `pick` draws with: Exp(1) noise (rows, V) from the seeded generator, on its device (None
        when greedy). Drawn outside the step, so that a captured step stays a function of its inputs."""
        if self.temperature == 0:
            return None
        return torch.empty(rows, vocab, device=generator.device).exponential_(generator=generator)

    def pick(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Token ids (B,) from (B, V) next-token logits, chosen on the logits' device without waiting for it."""
        if self.temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth_largest = logits.topk(self.top_k).values[:, -1:]
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(descending=True)
            probs = sorted_logits.softmax(-1)
            # Keep the most likely tokens until their mass reaches top_p (always at least one).
            outside = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
        # argmax p_i / E_i with E_i ~ Exp(1) picks token i with probability p_i (gpt-fast's
        # multinomial_sample_one_no_sync): no host sync, unlike torch.multinomial.
        return (logits.softmax(-1) / noise).argmax(-1)


def chains_at(schedule: Schedule, position: int) -> int:
    return next(k for start, k in reversed(schedule) if start <= position)


def parse_switch(text: str | None) -> Schedule:
    """ "0:4,32:1,64:2" -> [(0, 4), (32, 1), (64, 2)]; None -> []."""
    entries = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        try:
            position, chains = (int(v) for v in part.split(":"))
        except ValueError:
            raise OptionError(
                "{switch} {text!r}: expected POSITION:CHAINS pairs, e.g. 0:4,32:1,64:2", text=text
            ) from None
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
            raise ColmError(
                f"switch schedule {', '.join(f'{p}:{c}' for p, c in schedule)} is not increasing; "
                "give generated positions in increasing order, e.g. 0:4,32:1,64:2"
            )
    return schedule


def check_prompt(cfg, prompt_ids: list[int], name: str = "the prompt") -> None:
    """A prompt the model can continue; `name` says which one (a line of a prompts file)."""
    if not prompt_ids:
        raise ColmError(f"{name} is empty; give some text to continue")
    if len(prompt_ids) > cfg.max_seq_len:
        raise ColmError(
            f"{name} is {len(prompt_ids)} tokens, longer than the model's context of {cfg.max_seq_len}; shorten it"
        )
    bad = [i for i in prompt_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ColmError(f"{name} has token id {bad[0]}, outside the vocabulary 0..{cfg.vocab_size - 1}")


def default_prefill_chains(cfg, schedule: Schedule) -> int:
    """Air builds the prompt's cache with chain 1; CoLM needs the first segment's chains."""
    return 1 if cfg.kv_share else schedule[0][1]


def decode_step(
    model,
    cache: KVCache,
    tokens: torch.Tensor,
    at: int | torch.Tensor,
    chains: int,
    sampling: Sampling,
    noise: torch.Tensor | None,
    head: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run new tokens (B, T) at `chains` chains into the cache's columns `at` and pick every row's next
    token on the device: (token ids (B,), next-token logits (B, V)). A pure function of its tensors: it
    reads no host state and leaves the cache's bookkeeping to its caller, so that with `at` a device
    tensor and T == 1 one such step per chain count is what torch.compile captures (compiled_decode_step)."""
    hidden = model.hidden_states(tokens, chains, cache, at)[:, -1]
    logits = model.logits(hidden, chains, head)
    return sampling.pick(logits, noise), logits


COMPILED_STEPS: dict[str, Callable] = {}  # device type -> decode_step compiled for it, shared by every run


def compiled_decode_step(device: torch.device) -> Callable:
    """decode_step through torch.compile, whole (fullgraph: any graph break is an error). On CUDA in
    mode "reduce-overhead": each (chain count, batch, capacity, sampling) gets its own CUDA graph, replayed
    with one launch per step. Inductor's compiled kernels are kept in colm's cache directory, so only a first
    run pays the compilation in full; that run says so on stderr."""
    if device.type not in COMPILED_STEPS:
        kernels = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor")))
        if not (kernels.is_dir() and any(kernels.iterdir())):
            print(
                f"colm: first run: compiling the decode step (warm-up; the kernels are kept in {kernels} "
                "for later runs)",
                file=sys.stderr,
            )
        # One graph per chain count, batch and cache capacity: more than torch's default of 8 recompilations.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        mode = "reduce-overhead" if device.type == "cuda" else None
        COMPILED_STEPS[device.type] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return COMPILED_STEPS[device.type]


def compiled_capacity(positions: int) -> int:
    """A compiled step's cache capacity: the next power of two, so that prompts of many lengths share a few
    graphs (each capacity is its own graph; attending over up to twice the columns is the price)."""
    return max(64, 1 << (positions - 1).bit_length())


# What compiled steps read, kept per model between runs: a CUDA graph records the addresses it reads, so
# a new cache or LM head would mean recording every graph again, and a tensor that is neither a parameter
# nor a buffer would be copied into the graph's own memory at every step.
KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {"cache", "head", "head_of"}


def kept_cache(model, kv_heads: int, capacity: int, pad: list[int]) -> KVCache:
    """The model's kept cache, emptied, where it has this shape and no running stream uses it; else a new one."""
    kept = KEPT.setdefault(model, {})
    cache = kept.get("cache")
    if cache is not None and not cache.in_use and tuple(cache.keys.shape[1:4]) == (len(pad), kv_heads, capacity):
        cache.restart(model, pad)
        return cache
    cache = KVCache(model, kv_heads, capacity, pad)
    if not (kept.get("cache") is not None and kept["cache"].in_use):
        kept["cache"] = cache
    return cache


def kept_head(model) -> torch.Tensor:
    """model.packed_head(), built again only when a head block was replaced or changed in place."""
    kept = KEPT.setdefault(model, {})
    head_of = [(block.data_ptr(), block._version) for block in model.head_blocks()]
    if kept.get("head_of") != head_of:
        kept["head"], kept["head_of"] = model.packed_head(), head_of
        torch._dynamo.mark_static_address(kept["head"])
    return kept["head"]


@torch.inference_mode()  # on a generator function: active only while the generator itself runs
def stream_batch(
    model,
    prompts: list[list[int]],
    schedule: Schedule,
    max_new_tokens: int,
    prefill_chains: int | None = None,
    sampling: Sampling | None = None,
    report: dict | None = None,
    compile_step: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (every row's token id, (B, V) next-token logits) for each generated position, up to
    max_new_tokens or the context of the shortest prompt (each row's own context ends it earlier:
    generate_batch stops there).

    The prompts are left-padded to the longest and run in lockstep; each row is what its prompt alone
    computes. The prompt columns but the last run once at `prefill_chains` only to fill the cache; the
    last one runs at the first segment's chain count and gives the first token's logits. `report`
    receives "kv_cache" (its size) and "schedule": one dict per segment reached, "recomputed" saying
    whether the cache had to be rebuilt for it.

    compile_step: one-token steps run through compiled_decode_step at device-tensor columns, with
    the LM head packed once (on CUDA: a CUDA graph per chain count); otherwise every step runs eagerly at
    the filled columns only, the fewest operations, which is what a CPU step's time is made of.
    """
    cfg = model.config
    sampling = (sampling or Sampling()).validate()
    if not prompts:
        raise ColmError("no prompts; give at least one")
    for prompt_ids in prompts:
        check_prompt(cfg, prompt_ids)
    prefill_chains = default_prefill_chains(cfg, schedule) if prefill_chains is None else prefill_chains
    if not 1 <= prefill_chains <= cfg.n_chains:
        raise ColmError(f"prefill chains {prefill_chains} is outside 1..{cfg.n_chains}")
    if kv_heads_needed(cfg, prefill_chains) < kv_heads_needed(cfg, schedule[0][1]):
        raise OptionError(
            f"prefill with {prefill_chains} chains cannot serve {schedule[0][1]} chains: only "
            "CoLM-Air models (keys/values from chain 1) can; omit {prefill_chains}"
        )
    param = next(model.parameters())
    width = max(map(len, prompts))
    pad = [width - len(p) for p in prompts]
    n_new = min(max_new_tokens, cfg.max_seq_len - min(map(len, prompts)) + 1)  # the last token is never fed back
    heads = max(kv_heads_needed(cfg, k) for k in [prefill_chains] + [k for _, k in schedule])
    positions = width + n_new - 1
    if compile_step:
        cache, head = kept_cache(model, heads, compiled_capacity(positions), pad), kept_head(model)
        compiled = compiled_decode_step(param.device)
    else:
        cache, head, compiled = KVCache(model, heads, positions, pad), None, None
    generator = torch.Generator(param.device).manual_seed(sampling.seed)
    report = {} if report is None else report
    report["kv_cache"] = {"heads": heads, "positions": cache.capacity, "bytes": cache.nbytes}
    report["schedule"] = []

    segment_starts = dict(schedule)
    cache.in_use = True  # until this generator ends, however it ends
    try:
        ids = torch.tensor([[0] * n + p for n, p in zip(pad, prompts)], device=param.device)  # padding: any id
        if width > 1:
            extend(model, cache, ids[:, :-1], prefill_chains)
        # The strides of every later step's tokens (B, 1): a compiled step is specialised on them.
        pending = ids[:, -1:].clone(memory_format=torch.contiguous_format)
        generated = []  # each step's tokens (B, 1): joined to the prompts only when a recomputation needs them
        # Steps whose tokens are not read yet: on an accelerator the next step is enqueued before a step's
        # tokens are read back, so that the device never waits for the host. A CPU step runs as it is
        # enqueued: there, nothing would overlap, and the first token would come a step later.
        ready, lag = collections.deque(), int(param.device.type != "cpu")
        for position in range(n_new):
            chains = chains_at(schedule, position)
            recompute = kv_heads_needed(cfg, chains) > cache.complete_heads
            if recompute:  # only CoLM without Air switching up: the new chains' keys/values are missing
                cache.reset()
                pending = torch.cat([ids, *generated], dim=1)
            if position in segment_starts:
                report["schedule"].append({"start": position, "chains": chains, "recomputed": recompute})
            noise = sampling.noise(len(prompts), cfg.vocab_size, generator)
            if compiled and pending.shape[1] == 1:
                at = cache.columns[cache.length : cache.length + 1]
                tokens, logits = compiled(model, cache, pending, at, chains, sampling, noise, head)
                tokens, logits = tokens.clone(), logits.clone()  # a CUDA graph's next replay overwrites its outputs
            else:
                tokens, logits = decode_step(model, cache, pending, cache.length, chains, sampling, noise, head)
            cache.record(pending.shape[1], kv_heads_needed(cfg, chains))
            ready.append((tokens, logits))
            if len(ready) > lag:
                tokens_read, logits_read = ready.popleft()
                yield tokens_read.tolist(), logits_read  # the host's one wait for the device
            pending = tokens[:, None]
            generated.append(pending)
        for tokens_read, logits_read in ready:
            yield tokens_read.tolist(), logits_read
    finally:
        cache.in_use = False


def stream_tokens(
    model,
    prompt_ids: list[int],
    schedule: Schedule,
    max_new_tokens: int,
    prefill_chains: int | None = None,
    sampling: Sampling | None = None,
    report: dict | None = None,
    compile_step: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """stream_batch of one prompt: yield (token id, (V,) next-token logits) for each generated token."""
    for tokens, logits in stream_batch(
        model, [prompt_ids], schedule, max_new_tokens, prefill_chains, sampling, report, compile_step
    ):
        yield tokens[0], logits[0]


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
        final -= max((n for s in self.stop for n in range(1, len(s)) if self.text[:final].endswith(s[:n])), default=0)
        return self._take(final)

    def finish(self) -> str:
        """Whatever was held back, now that no more tokens come."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


class Continuation:
    """One prompt's generated tokens, its final text, and why it stopped: EOS ("eos", not part of the
    text), a stop string ("stop_string", cut from the text), max_new_tokens, or the model's context
    ("context")."""

    def __init__(
        self, tokenizer, cfg, prompt_tokens: int, max_new_tokens: int, eos_id: int | None, stop: list[str] = ()
    ):
        self.tokens: list[int] = []
        self.text = TextStream(tokenizer, stop)
        self.max_new_tokens = max_new_tokens
        self.limit = min(max_new_tokens, cfg.max_seq_len - prompt_tokens + 1)  # the last token is never fed back
        self.eos_id = eos_id
        self.stop_reason: str | None = None

    def take(self, token: int) -> str:
        """Add a generated token; return the newly final text (stop_reason is set when this one ends it)."""
        self.tokens.append(token)
        if token == self.eos_id:
            self.stop_reason = "eos"
            return ""
        piece = self.text.push(token)
        if self.text.stopped:
            self.stop_reason = "stop_string"
        elif len(self.tokens) == self.limit:
            self.stop_reason = "max_new_tokens" if self.limit == self.max_new_tokens else "context"
        return piece


def generate(
    model,
    prompt: str | list[int],
    options: GenerateOptions | None = None,
    *,
    eos_id: int | None = None,
    on_text: Callable[[str], None] | None = None,
    compile_step: bool | None = None,
) -> dict:
    """Continue a prompt and return a JSON-ready record: prompt ids, text, token ids, schedule, timings.

    A text prompt is encoded as the model's tokenizer starts a sequence (BOS only if its policy adds
    one, as transformers does); a list of token ids is used as given. `options` (default: the defaults
    of `colm generate`) say which sub-model generates, how it samples and when it stops: at EOS
    (eos_id; default: the config's eos_token_id), at a stop string (cut from the text), after
    max_new_tokens, or at the model's context. `on_text` receives the text as it becomes final.
    """
    return generate_batch(
        model,
        [prompt],
        options,
        eos_id=eos_id,
        on_text=on_text and (lambda row, piece: on_text(piece)),
        compile_step=compile_step,
    )[0]


def generate_batch(
    model,
    prompts: list[str | list[int]],
    options: GenerateOptions | None = None,
    *,
    eos_id: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
    compile_step: bool | None = None,
) -> list[dict]:
    """Continue several prompts in one batch: one record per prompt, in order, each as `generate` gives
    it (under greedy decoding, the same tokens as that prompt alone). Each row stops on its own; the
    timings are the whole batch's. `on_text(row, piece)` receives each row's text as it becomes final.
    Text prompts are encoded as in `generate`. compile_step (see stream_batch): by default on CUDA only.
    """
    cfg, o = model.config, options or GenerateOptions()
    prompts = [model.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p) for p in prompts]
    schedule = make_schedule(cfg.n_chains, o.chains, parse_switch(o.switch))
    sampling = Sampling.of(o)
    eos_id = cfg.eos_token_id if eos_id is None else eos_id
    prefill_chains = default_prefill_chains(cfg, schedule) if o.prefill_chains is None else o.prefill_chains
    emit = on_text or (lambda row, piece: None)
    rows = [Continuation(model.tokenizer, cfg, len(p), o.max_new_tokens, eos_id, o.stop or []) for p in prompts]
    report = {}

    start = time.perf_counter()
    first_token_at = None
    if compile_step is None:
        compile_step = next(model.parameters()).device.type == "cuda"
    steps = stream_batch(model, prompts, schedule, o.max_new_tokens, prefill_chains, sampling, report, compile_step)
    for step_tokens, _ in steps:
        first_token_at = first_token_at or time.perf_counter()
        for i, (row, token) in enumerate(zip(rows, step_tokens)):
            if row.stop_reason is None:
                piece = row.take(token)
                if piece:
                    emit(i, piece)
        if all(row.stop_reason for row in rows):
            break
    steps.close()
    end = time.perf_counter()
    for i, row in enumerate(rows):
        rest = row.text.finish()
        if rest:
            emit(i, rest)
    ttft = first_token_at - start
    decoded = sum(len(row.tokens) - 1 for row in rows)  # the tokens after each row's first
    timings = {
        "time_to_first_token_s": ttft,
        "prefill_tokens_per_s": sum(map(len, prompts)) / ttft,
        "decode_tokens_per_s": decoded / (end - first_token_at) if decoded else None,
        "total_s": end - start,
    }
    return [
        {
            "prompt_ids": prompt_ids,
            "prompt_tokens": len(prompt_ids),
            "text": row.text.text,
            "token_ids": row.tokens,
            "stop_reason": row.stop_reason,
            "prefill_chains": prefill_chains,
            **report,
            "sampling": dataclasses.asdict(sampling),
            "timings": timings,
        }
        for prompt_ids, row in zip(prompts, rows)
    ]
