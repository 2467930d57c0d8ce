"""What `colm serve` computes behind its HTTP layer: OpenAI-style requests checked into jobs, a scheduler
that batches every job in flight into one decode step (continuous batching), the elastic choice of a
chain count, and the response bodies. The HTTP layer (colm_cli/serve.py) only moves bytes.

Continuous batching: one thread owns the model. Between two decode steps it admits queued jobs: each
new prompt but its last token is run once (prefill) into a cache of its own, then every row's cache is
laid out again, right-aligned, into one left-padded KVCache (colm_core/generation.py), and the next step
feeds every row's pending token at once. A row that ends leaves the batch at the next layout.

Chain counts share a step (docs/spec.md sections 3-4): chains 1..k never read a later chain, so the step runs
at K, the largest chain count in the batch, and each row reads the logits of its own k from the same
hidden states. A CoLM-Air's keys and values come from chain 1 alone: a prompt is prefilled with chain 1,
as `colm generate` does, and rows of any k share one cache. A CoLM without Air holds the heads of K
chains; when a job raises K, the rows already running are prefilled again at the new K (their new
chains' keys and values were never computed), as `colm generate --switch` recomputes when switching up.
"""

from __future__ import annotations

import hmac
import json
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from colm_core.errors import ColmError, missing_extra
from colm_core.generation import Continuation, KVCache, Sampling, extend, kv_heads_needed
from colm_core.options import ServeOptions
from colm_core.tokenizer import CHAT_TEMPLATE_FILE, tokenizer_config

AUTO = "auto"  # NAME@auto: the elastic chain count
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length", "context": "length"}


class RequestError(ColmError):
    """A request the server refuses: an OpenAI-style error body with an HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class ServeLimits:
    """What one request may ask for, and how much work the server takes on at once."""

    max_prompt_tokens: int  # default: the model's context
    max_tokens: int = ServeOptions.max_tokens  # the most a request's max_tokens may be
    max_body_bytes: int = ServeOptions.max_body_bytes
    max_concurrent: int = ServeOptions.max_concurrent  # prompts queued or running; more is refused with 429
    max_batch: int = ServeOptions.max_batch  # rows per decode step; more wait in the queue
    max_logprobs: int = 5  # alternatives per token, as OpenAI's completions allow

    @classmethod
    def of(cls, options: ServeOptions, context: int) -> ServeLimits:
        """The limits that `colm serve`'s options set for a model of this context length."""
        return cls(
            max_prompt_tokens=min(options.max_prompt_tokens or context, context),
            max_tokens=options.max_tokens,
            max_body_bytes=options.max_body_bytes,
            max_concurrent=options.max_concurrent,
            max_batch=options.max_batch,
        )


def check_api_key(expected: str | None, authorization: str | None) -> None:
    """`Authorization: Bearer KEY`, compared in constant time."""
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise RequestError(
            "missing or wrong API key: send the header `Authorization: Bearer KEY`", 401, kind="authentication_error"
        )


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


# ---------------------------------------------------------------------------------------------------------
# Chat template


def chat_template(checkpoint: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja (transformers 5), else tokenizer_config.json's
    chat_template (a string, or a list of named templates of which "default" is used)."""
    path = Path(checkpoint) / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text()
    template = tokenizer_config(checkpoint).get("chat_template")
    if isinstance(template, list):
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return template if isinstance(template, str) else None


def special_token_text(config: dict, name: str) -> str:
    value = config.get(name)
    return value.get("content", "") if isinstance(value, dict) else value if isinstance(value, str) else ""


class ChatTemplate:
    """A Jinja chat template rendered as transformers renders it: a sandbox, trim_blocks and lstrip_blocks,
    `raise_exception`, and the tokenizer's bos_token / eos_token text."""

    def __init__(self, source: str, checkpoint: Path):
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:
            raise missing_extra("chat templates are rendered by Jinja2", e, "serve") from None

        def raise_exception(message):
            raise RequestError(f"the chat template refused the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(source)
        config = tokenizer_config(checkpoint)
        self.specials = {name: special_token_text(config, name) for name in ("bos_token", "eos_token")}

    def render(self, messages: list[dict]) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.specials)
        except TemplateError as e:
            raise RequestError(f"the chat template failed on these messages: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Requests


def field_of(body: dict, name: str, types: type | tuple, default=None, check: Callable | None = None, rule: str = ""):
    """body[name] if it has one of `types` (and passes `check`), default when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        value = object()  # JSON true is not a number
    if not isinstance(value, types) or (check is not None and not check(value)):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise RequestError(f"`{name}` must be {rule or names}; got {json.dumps(body.get(name))[:80]}", param=name)
    return value


IGNORED_FIELDS = {"user", "stream_options", "metadata", "store", "service_tier"}  # nothing to do (usage always comes)
NEUTRAL = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "best_of": 1,
    "logit_bias": {},
    "response_format": {"type": "text"},
}  # what clients send at these values, which change nothing


@dataclass
class GenerationRequest:
    """One checked /v1/completions or /v1/chat/completions request: one or more prompts as token ids."""

    chains: int  # 0: NAME@auto
    prompts: list[list[int]]
    prompt_texts: list[str]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    stream: bool
    logprobs: int | None
    echo: bool
    chat: bool


class Models:
    """The names one checkpoint is served under: NAME (all chains), NAME@k, and NAME@auto with --elastic."""

    def __init__(self, name: str, n_chains: int, elastic: bool):
        self.name, self.n_chains, self.elastic = name, n_chains, elastic

    def listing(self) -> dict:
        names = [self.name] + [f"{self.name}@{k}" for k in range(1, self.n_chains + 1)]
        names += [f"{self.name}@{AUTO}"] if self.elastic else []
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "colm"} for n in names],
        }

    def chains(self, model: str) -> int | None:
        """The chain count a model name asks for; None for NAME@auto."""
        name, at, k = model.partition("@")
        if name == self.name and not at:
            return self.n_chains
        if name == self.name and k == AUTO and self.elastic:
            return None
        if name == self.name and k.isdigit() and 1 <= int(k) <= self.n_chains:
            return int(k)
        hint = " (NAME@auto needs `colm serve --elastic`)" if k == AUTO else ""
        raise RequestError(
            f"unknown model {model!r}{hint}; GET /v1/models lists the {self.n_chains + 1} names "
            f"this server serves, e.g. {self.name}@1",
            404,
            "model",
            "not_found_error",
        )


def parse_request(
    body: dict,
    models: Models,
    tokenizer,
    vocab_size: int,
    limits: ServeLimits,
    template: ChatTemplate | None,
    chat: bool,
) -> GenerationRequest:
    """Check a request body field by field; any problem is a RequestError naming the field.
    NAME@auto gives chains 0, which the engine fills in when it takes the job."""
    unknown = sorted(set(body) - FIELDS[chat] - IGNORED_FIELDS - set(NEUTRAL))
    if unknown:
        raise RequestError(
            f"unknown field `{unknown[0]}`; this server takes {', '.join(sorted(FIELDS[chat]))}", param=unknown[0]
        )
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise RequestError(f"`{name}` is not supported; leave it out (or {json.dumps(neutral)})", param=name)
    model = field_of(body, "model", str)
    if model is None:
        raise RequestError("`model` is required; GET /v1/models lists the names", param="model")
    chains = models.chains(model)
    field_of(body, "n", int, 1, lambda v: v == 1, "1 (one choice per prompt)")
    max_tokens = field_of(
        body,
        "max_tokens" if "max_tokens" in body or not chat else "max_completion_tokens",
        int,
        16 if not chat else limits.max_tokens,
        lambda v: 0 <= v <= limits.max_tokens,
        f"an integer in 0..{limits.max_tokens}",
    )
    temperature = field_of(body, "temperature", (int, float), 1.0, lambda v: 0 <= v <= 2, "a number in 0..2")
    top_p = field_of(body, "top_p", (int, float), None, lambda v: 0 < v <= 1, "a number in (0, 1]")
    seed = field_of(body, "seed", int, 0, lambda v: 0 <= v < 2**63, "a non-negative integer")
    stop = field_of(
        body,
        "stop",
        (str, list),
        [],
        lambda v: (
            all(isinstance(s, str) and len(s) <= 256 for s in ([v] if isinstance(v, str) else v))
            and (isinstance(v, str) or len(v) <= 4)
        ),
        "a string or a list of at most 4 strings, each at most 256 characters",
    )
    stop = [stop] if isinstance(stop, str) else stop
    stream = field_of(body, "stream", bool, False)
    if chat:
        if field_of(body, "logprobs", bool, False):
            raise RequestError(
                "`logprobs` is not supported on chat completions; use /v1/completions with `logprobs`", param="logprobs"
            )
        if template is None:
            raise RequestError(
                "this checkpoint has no chat template (chat_template.jinja or tokenizer_config.json's "
                "chat_template); use /v1/completions, or serve a checkpoint imported with one",
                param="messages",
            )
        messages = field_of(
            body,
            "messages",
            list,
            None,
            lambda v: (
                len(v) > 0
                and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in v
                )
            ),
            'a non-empty list of {"role": ..., "content": TEXT} objects',
        )
        if messages is None:
            raise RequestError("`messages` is required", param="messages")
        text = template.render([{"role": m["role"], "content": m["content"]} for m in messages])
        # The template writes the special tokens it wants as text (as transformers' apply_chat_template does).
        texts, prompts, logprobs, echo = [text], [tokenizer.encode(text, add_special_tokens=False)], None, False
    else:
        logprobs = field_of(
            body,
            "logprobs",
            int,
            None,
            lambda v: 0 <= v <= limits.max_logprobs,
            f"an integer in 0..{limits.max_logprobs}",
        )
        echo = field_of(body, "echo", bool, False)
        texts, prompts = completion_prompts(body, tokenizer)
    if max_tokens == 0 and not echo:
        raise RequestError(
            "`max_tokens` 0 generates nothing; give at least 1 (0 is for echo=true scoring)", param="max_tokens"
        )
    if temperature == 0 and top_p is not None and top_p < 1:
        top_p = None  # greedy: OpenAI clients send top_p with temperature 0, where it changes nothing
    for ids in prompts:
        if not ids:
            raise RequestError("the prompt is empty; give some text or token ids", param="prompt")
        if len(ids) > limits.max_prompt_tokens:
            raise RequestError(
                f"the prompt is {len(ids)} tokens; this server takes at most "
                f"{limits.max_prompt_tokens} (--max-prompt-tokens)",
                param="prompt",
            )
        if not all(0 <= i < vocab_size for i in ids):
            raise RequestError(f"a prompt token id is outside the vocabulary 0..{vocab_size - 1}", param="prompt")
    sampling = Sampling(float(temperature), None, None if top_p is None else float(top_p), seed)
    return GenerationRequest(chains or 0, prompts, texts, max_tokens, sampling, stop, stream, logprobs, echo, chat)


FIELDS = {
    False: {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "logprobs", "echo"},
    True: {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "logprobs",
    },
}


def completion_prompts(body: dict, tokenizer) -> tuple[list[str], list[list[int]]]:
    """`prompt`: a string, a list of token ids, or a list of either (one choice each). Text is encoded as
    `colm generate` encodes a prompt (as the tokenizer starts a sequence); token ids are used as given."""
    prompt = body.get("prompt")

    def is_ids(v):
        return isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt)):
        raise RequestError(
            "`prompt` must be a string, a list of token ids, or a non-empty list of either", param="prompt"
        )
    if "" in prompt:
        raise RequestError("the prompt is empty; give some text to continue", param="prompt")
    ids = [tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p) for p in prompt]
    return [p if isinstance(p, str) else tokenizer.decode(p) for p in prompt], ids


# ---------------------------------------------------------------------------------------------------------
# The engine


@dataclass
class Job:
    """One prompt of a request, from the queue to its last token. Filled in by the engine thread."""

    prompt: list[int]
    chains: int  # 0: NAME@auto, chosen when submitted
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    logprobs: int | None
    echo: bool
    on_event: Callable[[Job, str], None] = lambda job, piece: None  # new final text, "" when done
    continuation: Continuation | None = None
    prompt_logprobs: list = field(default_factory=list)  # (logprob, top) of prompt tokens 1.. (echo + logprobs)
    token_logprobs: list = field(default_factory=list)  # (logprob, top) of each generated token
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    submitted_at: float = 0.0
    finished_at: float = 0.0


@dataclass
class Row:
    """A job in the running batch: the tokens its cache rows hold, and the token it feeds next."""

    job: Job
    fed: list[int]
    pending: int
    generator: torch.Generator
    cache: KVCache | None = None  # where its keys and values are now, and at which batch index
    index: int = 0


class Engine:
    """Continuous batching over one model in one thread; `submit` and `cancel` may be called from any thread."""

    def __init__(self, model, limits: ServeLimits, max_wait_s: float | None = None):
        self.model, self.cfg, self.limits = model, model.config, limits
        self.device = next(model.parameters()).device
        self.max_wait_s = max_wait_s  # --elastic: the queue wait NAME@auto keeps under
        self.queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.rows: list[Row] = []
        self.admitting: list[Job] = []
        self.cache: KVCache | None = None
        self.in_flight = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = False
        self.step_seconds = {k: 0.0 for k in range(1, self.cfg.n_chains + 1)}  # moving average per batch K
        self.stats = {"steps": 0, "generated_tokens": 0, "relayouts": 0, "recomputed_rows": 0, "cancelled": 0}
        self.calibrate()
        self.thread = threading.Thread(target=self.run, name="colm-serve-engine", daemon=True)
        self.thread.start()

    # -- from request threads --------------------------------------------------------------------------

    def submit(self, jobs: list[Job]) -> None:
        with self.lock:
            if self.closed:
                raise RequestError("the server is shutting down", 503, kind="server_error")
            if self.in_flight + len(jobs) > self.limits.max_concurrent:
                raise RequestError(
                    f"the server is busy: {self.in_flight} prompts in flight, at most "
                    f"{self.limits.max_concurrent} (--max-concurrent); retry later",
                    429,
                    kind="rate_limit_error",
                )
            for job in jobs:
                job.chains = job.chains or self.elastic_chains(job)
                job.submitted_at = time.perf_counter()
                self.queue.put(job)
            self.in_flight += len(jobs)
        self.wake.set()

    def cancel(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.cancelled = True
        self.wake.set()

    def close(self) -> None:
        """Stop the thread; jobs not finished are answered with an error."""
        with self.lock:
            self.closed = True
        self.wake.set()
        self.thread.join(timeout=60)

    def elastic_chains(self, job: Job) -> int:
        """NAME@auto: the largest k whose expected queue wait stays under max_wait_s. The wait is the work
        queued and running (tokens still to generate) spread over the batch's rows, times the measured time
        of one decode step at k chains; with every request at NAME@auto the batch runs at that k."""
        ahead = sum(r.job.continuation.limit - len(r.job.continuation.tokens) for r in self.rows)
        ahead += (self.in_flight - len(self.rows)) * job.max_tokens  # queued jobs, estimated like this one
        steps = math.ceil(ahead / self.limits.max_batch)
        fitting = [k for k, s in self.step_seconds.items() if steps * s <= self.max_wait_s]
        return max(fitting, default=1)

    # -- the engine thread ------------------------------------------------------------------------------

    @torch.inference_mode()
    def calibrate(self) -> None:
        """One decode step per chain count, timed: the elastic choice's first estimates (and a warm-up)."""
        for k in self.step_seconds:
            cache = KVCache(self.model, kv_heads_needed(self.cfg, k), 2)
            tokens = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            extend(self.model, cache, tokens, k)
            start = time.perf_counter()
            self.model.logits(extend(self.model, cache, tokens, k)[:, -1], k).sum().item()
            self.step_seconds[k] = time.perf_counter() - start

    def run(self) -> None:
        while True:
            self.wake.wait(timeout=None if not self.rows else 0)
            self.wake.clear()
            with self.lock:
                closed = self.closed
            if closed:
                self.fail_all("the server shut down before this request finished")
                return
            try:
                with torch.inference_mode():
                    self.admit()
                    if self.rows:
                        self.step()
                        self.wake.set()  # keep stepping while rows run
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, never the server
                self.fail_all(f"generation failed: {type(e).__name__}: {e}")

    def admit(self) -> None:
        new = self.admitting = []  # taken from the queue, not yet rows: fail_all must see them too
        while len(self.rows) + len(new) < self.limits.max_batch:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job.cancelled:
                self.finish(job, None)
            else:
                new.append(job)
        dropped = [r for r in self.rows if r.job.finish_reason or r.job.cancelled]
        for row in dropped:
            self.finish(row.job, None)
        if not new and not dropped:
            return
        self.rows = [r for r in self.rows if r not in dropped]
        chains = max((j.chains for j in new), default=0)
        batch_chains = max([chains] + [r.job.chains for r in self.rows])
        for job in new:
            row = self.prefill(job, batch_chains)
            if row is not None:
                self.rows.append(row)
        self.admitting = []
        self.layout(batch_chains)

    def prefill(self, job: Job, batch_chains: int) -> Row | None:
        """Run the prompt but its last token into a cache of its own (with echo, score every prompt token)."""
        cfg = self.cfg
        job.continuation = Continuation(
            self.model.tokenizer, cfg, len(job.prompt), max(job.max_tokens, 1), cfg.eos_token_id, job.stop
        )
        row = Row(job, job.prompt[:-1], job.prompt[-1], torch.Generator(self.device).manual_seed(job.sampling.seed))
        # Air: chain 1 builds the cache, as `colm generate` does, unless prompt logprobs need chains 1..k.
        chains = (job.chains if job.echo and job.logprobs is not None else 1) if cfg.kv_share else batch_chains
        hidden = self.fill(row, chains)
        if job.echo and job.logprobs is not None and hidden is not None:
            job.prompt_logprobs = self.scored(self.model.logits(hidden[0], job.chains), job.prompt[1:], job.logprobs)
        if job.max_tokens == 0:
            job.continuation.stop_reason = "max_new_tokens"
            self.finish(job, None)
            return None
        return row

    def fill(self, row: Row, chains: int) -> torch.Tensor | None:
        """Run the row's fed tokens into a new one-row cache; their hidden states (1, T, D)."""
        row.cache, row.index = KVCache(self.model, kv_heads_needed(self.cfg, chains), max(len(row.fed), 1)), 0
        if not row.fed:
            return None
        return extend(self.model, row.cache, torch.tensor([row.fed], device=self.device), chains)

    def layout(self, chains: int) -> None:
        """Lay every row's keys and values out again in one left-padded cache, right-aligned, with room for
        the most steps any row still takes. Rows whose cache lacks the heads of `chains` are filled again."""
        if not self.rows:
            self.cache = None
            return
        heads = kv_heads_needed(self.cfg, chains)
        for row in self.rows:
            if row.cache.complete_heads < heads:
                self.fill(row, chains)
                self.stats["recomputed_rows"] += 1
        width = max(len(r.fed) for r in self.rows)
        steps = max(r.job.continuation.limit - len(r.job.continuation.tokens) for r in self.rows)
        cache = KVCache(self.model, heads, width + steps, [width - len(r.fed) for r in self.rows])
        cache.length = width
        for i, row in enumerate(self.rows):
            n, end = len(row.fed), row.cache.length
            if n:
                for mine, theirs in ((cache.keys, row.cache.keys), (cache.values, row.cache.values)):
                    mine[:, i, :, width - n : width] = theirs[:, row.index, :heads, end - n : end]
            row.cache, row.index = cache, i
        self.cache = cache
        self.stats["relayouts"] += 1

    def step(self) -> None:
        """One decode step of every row at the batch's largest chain count; each row reads its own k's logits."""
        chains = max(r.job.chains for r in self.rows)
        start = time.perf_counter()
        tokens = torch.tensor([[r.pending] for r in self.rows], device=self.device)
        hidden = extend(self.model, self.cache, tokens, chains)[:, -1]
        logits = [None] * len(self.rows)
        for k in sorted({r.job.chains for r in self.rows}):
            rows = [i for i, r in enumerate(self.rows) if r.job.chains == k]
            for i, row_logits in zip(rows, self.model.logits(hidden[rows], k)):
                logits[i] = row_logits
        picked = [
            r.job.sampling.pick(row[None], r.job.sampling.noise(1, row.shape[-1], r.generator))
            for r, row in zip(self.rows, logits)
        ]
        picked = torch.cat(picked).tolist()  # the step's one wait for the device
        seconds = time.perf_counter() - start
        self.step_seconds[chains] = 0.8 * self.step_seconds[chains] + 0.2 * seconds
        self.stats["steps"] += 1
        self.stats["generated_tokens"] += len(picked)
        for row, token, row_logits in zip(self.rows, picked, logits):
            job = row.job
            if job.cancelled:
                continue
            if job.logprobs is not None:
                job.token_logprobs += self.scored(row_logits[None], [token], job.logprobs)
            piece = job.continuation.take(token)
            row.fed.append(row.pending)
            row.pending = token
            if job.continuation.stop_reason:
                self.finish(job, piece)
            elif piece:
                self.emit(job, piece)

    def scored(self, logits: torch.Tensor, targets: list[int], top: int) -> list[tuple[float, dict]]:
        """(log p(target), {token text: log p} of the `top` most likely) per position of (T, V) logits."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0].tolist()
        alternatives = [[]] * len(targets)
        if top:
            values, ids = logprobs.topk(top, dim=-1)
            alternatives = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        decode = self.model.tokenizer.decode
        return [(lp, {decode([i]): v for i, v in alt}) for lp, alt in zip(chosen, alternatives)]

    def emit(self, job: Job, piece: str) -> None:
        try:
            job.on_event(job, piece)
        except Exception:  # noqa: BLE001 - a client that went away must not stop the engine
            job.cancelled = True

    def finish(self, job: Job, piece: str | None) -> None:
        """A job is done (or cancelled): release its place and tell its request."""
        if job.finished_at:
            return
        self.stats["cancelled"] += job.cancelled
        if piece:
            self.emit(job, piece)
        rest = job.continuation.text.finish() if job.continuation else ""
        if rest:
            self.emit(job, rest)
        job.finish_reason = FINISH_REASONS.get(job.continuation.stop_reason) if job.continuation else None
        job.finished_at = time.perf_counter()
        with self.lock:
            self.in_flight -= 1
        self.emit(job, "")

    def fail_all(self, message: str) -> None:
        jobs = [r.job for r in self.rows] + self.admitting
        while True:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.rows, self.cache, self.admitting = [], None, []
        for job in jobs:
            job.error = job.error or message
            self.finish(job, None)


# ---------------------------------------------------------------------------------------------------------
# Responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(jobs: list[Job]) -> dict:
    prompt = sum(len(j.prompt) for j in jobs)
    completion = sum(len(j.continuation.tokens) for j in jobs if j.continuation)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(job: Job, tokenizer) -> dict:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset; with echo,
    the prompt's tokens come first (the first one unscored: null)."""
    generated = job.continuation.tokens
    entries = list(zip(generated, job.token_logprobs))
    if job.echo:
        entries = [(job.prompt[0], (None, None))] + list(zip(job.prompt[1:], job.prompt_logprobs)) + entries
    tokens = [tokenizer.decode([t]) for t, _ in entries]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, (lp, _) in entries],
        "top_logprobs": [top for _, (_, top) in entries],
        "text_offset": offsets,
    }


def completion_choice(job: Job, index: int, request: GenerationRequest, tokenizer) -> dict:
    text = job.continuation.text.text if job.continuation else ""
    if request.chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": job.finish_reason,
            "logprobs": None,
        }
    return {
        "index": index,
        "text": request.prompt_texts[index] + text if request.echo else text,
        "logprobs": None if request.logprobs is None else completion_logprobs(job, tokenizer),
        "finish_reason": job.finish_reason,
    }


def response_body(request: GenerationRequest, jobs: list[Job], tokenizer, name: str) -> dict:
    chat = request.chat
    return {
        "id": new_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": served_name(name, jobs[0].chains),
        "choices": [completion_choice(j, i, request, tokenizer) for i, j in enumerate(jobs)],
        "usage": usage(jobs),
    }


def served_name(name: str, chains: int) -> str:
    """The name a response reports: which chain count served it (NAME@auto resolves to one)."""
    return f"{name}@{chains}"


def stream_chunk(
    request: GenerationRequest,
    response_id: str,
    model: str,
    index: int,
    piece: str | None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict:
    """A server-sent event's JSON: a piece of one choice's text, or its finish reason."""
    if request.chat:
        delta = (
            {"role": "assistant", "content": piece or ""} if first else {"content": piece} if piece is not None else {}
        )
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(request: GenerationRequest, response_id: str, model: str, jobs: list[Job]) -> dict:
    kind = "chat.completion.chunk" if request.chat else "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(jobs),
    }


class Service:
    """One checkpoint served: its names, limits, chat template and engine; what each endpoint computes."""

    def __init__(
        self,
        model,
        name: str,
        limits: ServeLimits,
        template: str | None = None,
        checkpoint: Path | None = None,
        api_key: str | None = None,
        max_wait_s: float | None = None,
    ):
        self.model, self.name, self.limits, self.api_key = model, name, limits, api_key
        self.models = Models(name, model.config.n_chains, max_wait_s is not None)
        self.template = None if template is None else ChatTemplate(template, checkpoint)
        self.engine = Engine(model, limits, max_wait_s)

    def parse(self, body: dict, chat: bool) -> GenerationRequest:
        return parse_request(
            body, self.models, self.model.tokenizer, self.model.config.vocab_size, self.limits, self.template, chat
        )

    def jobs(self, request: GenerationRequest) -> list[Job]:
        return [
            Job(ids, request.chains, request.max_tokens, request.sampling, request.stop, request.logprobs, request.echo)
            for ids in request.prompts
        ]

    def response(self, request: GenerationRequest, jobs: list[Job]) -> dict:
        return response_body(request, jobs, self.model.tokenizer, self.name)

    def close(self) -> None:
        self.engine.close()
