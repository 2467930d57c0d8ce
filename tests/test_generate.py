"""Generation: the cached decoder equals full recomputation, Air prefill with chain 1 and chain-count
switching change nothing but the cost, sampling, streaming text, and the `colm generate` command."""

import json
import os

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from colm_core import generation
from colm_core.checkpoint import save
from colm_core.errors import ColmError
from colm_core.generation import (
    Sampling,
    TextStream,
    chains_at,
    generate,
    generate_batch,
    make_schedule,
    stream_batch,
    stream_tokens,
)
from colm_core.model import CoLM
from colm_core.options import GenerateOptions
from colm_core.tokenizer import ByteTokenizer
from tests.conftest import assert_one_line_error, colm_in_process, tiny_config, tiny_model

# Head layouts where SDPA groups the KV heads itself ("gqa") and where the attention gathers them.
VARIANTS = {
    "colm": {},
    "colm-gqa": dict(kv_heads=[1, 1, 1]),
    "air": dict(kv_share=True, heads=[2, 4, 2], kv_heads=[2, 0, 0]),
    "air-gqa": dict(kv_share=True, kv_heads=[1, 0, 0]),
}
PROMPT = [5, 17, 3, 88, 40, 40, 12, 61, 9, 33, 70, 1, 25]
PROMPTS = [PROMPT, PROMPT[:1], PROMPT[4:9], [7, 30] * 9]  # different lengths: rows padded by 5, 17, 12, 0


@torch.no_grad()
def recompute_from_scratch(model, prompt, schedule, n):
    """Greedy decoding with no cache: token p from the whole sequence at schedule's chains."""
    ids, out = list(prompt), []
    for p in range(n):
        logits = model(torch.tensor([ids]), chains=chains_at(schedule, p))[0, -1]
        out.append((int(logits.argmax()), logits))
        ids.append(out[-1][0])
    return out


def assert_same_steps(got, expected):
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert (a - b).abs().max().item() <= 1e-5


def spy_on_forward(model, monkeypatch):
    """Record (new tokens, chains) of every forward pass the generator makes."""
    calls, forward = [], model.hidden_states

    def recording(ids, chains=None, cache=None, at=0):
        calls.append((ids.shape[1], chains))
        return forward(ids, chains, cache, at)

    monkeypatch.setattr(model, "hidden_states", recording)
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_full_recomputation_for_every_chain_count(variant):
    model = tiny_model(**VARIANTS[variant])
    for k in range(1, model.config.n_chains + 1):
        for prompt in (PROMPT, PROMPT[:1]):
            schedule = [(0, k)]
            got = list(stream_tokens(model, prompt, schedule, 10, prefill_chains=k))
            assert_same_steps(got, recompute_from_scratch(model, prompt, schedule, 10))


@pytest.mark.parametrize("variant", ["air", "air-gqa"])
def test_air_prefill_with_chain_1_equals_full_width_prefill(variant, monkeypatch):
    model = tiny_model(**VARIANTS[variant])
    for k in range(1, model.config.n_chains + 1):
        full = list(stream_tokens(model, PROMPT, [(0, k)], 8, prefill_chains=k))
        calls = spy_on_forward(model, monkeypatch)
        chain1 = list(stream_tokens(model, PROMPT, [(0, k)], 8, prefill_chains=1))
        monkeypatch.undo()
        assert_same_steps(chain1, full)
        # The prompt but its last token ran at chain 1 alone; everything after at k chains, one token at a time.
        assert calls == [(len(PROMPT) - 1, 1)] + [(1, k)] * 8


def test_air_is_the_default_prefill_and_colm_refuses_a_narrower_one():
    assert generate(tiny_model(**VARIANTS["air"]), PROMPT, GenerateOptions(max_new_tokens=2))["prefill_chains"] == 1
    assert generate(tiny_model(), PROMPT, GenerateOptions(max_new_tokens=2, chains=2))["prefill_chains"] == 2
    with pytest.raises(ColmError, match="only CoLM-Air"):
        generate(tiny_model(), PROMPT, GenerateOptions(max_new_tokens=2, chains=3, prefill_chains=1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_switching_schedule_equals_recomputation_from_scratch(variant, monkeypatch):
    model = tiny_model(**VARIANTS[variant])
    schedule = [(0, 3), (3, 1), (6, 2), (9, 3)]
    calls = spy_on_forward(model, monkeypatch)
    report = {}
    got = list(stream_tokens(model, PROMPT, schedule, 12, report=report))
    monkeypatch.undo()
    assert_same_steps(got, recompute_from_scratch(model, PROMPT, schedule, 12))
    recomputed = [seg["start"] for seg in report["schedule"] if seg["recomputed"]]
    tokens_run = sum(t for t, _ in calls)
    if model.config.kv_share:  # Air: every token runs once, whatever the chain count
        assert recomputed == [] and tokens_run == len(PROMPT) + 12 - 1
    else:  # switching down keeps a prefix of the cache; switching up (1 -> 2, 2 -> 3) reruns everything
        assert recomputed == [6, 9]
        assert tokens_run == len(PROMPT) + 12 - 1 + (len(PROMPT) + 6 - 1) + (len(PROMPT) + 9 - 1)
    assert [(s["start"], s["chains"]) for s in report["schedule"]] == schedule


def assert_rows_equal_single_prompts(model, prompts, schedule, n, **kw):
    """Greedy rows of a batch: the same tokens as each prompt alone, logits equal up to float rounding
    (a batched matrix product may round differently from a one-row one)."""
    batch = list(stream_batch(model, prompts, schedule, n, **kw))
    for row, prompt in enumerate(prompts):
        single = list(stream_tokens(model, prompt, schedule, n))
        assert [tokens[row] for tokens, _ in batch] == [t for t, _ in single]
        for (_, batch_logits), (_, logits) in zip(batch, single):
            assert (batch_logits[row] - logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", ["colm", "air"])
def test_batch_rows_equal_single_prompts_for_every_chain_count(variant):
    model = tiny_model(**VARIANTS[variant])
    for k in range(1, model.config.n_chains + 1):
        assert_rows_equal_single_prompts(model, PROMPTS, [(0, k)], 6)


@pytest.mark.parametrize("variant", ["colm", "air"])
def test_batch_rows_equal_single_prompts_when_switching(variant):
    """Air switches for free; CoLM reruns the whole padded batch when switching up."""
    assert_rows_equal_single_prompts(tiny_model(**VARIANTS[variant]), PROMPTS, [(0, 3), (3, 1), (6, 2)], 9)


SWITCHING = [(0, 3), (4, 1), (8, 2)]  # every chain count; CoLM without Air recomputes when switching up


@pytest.mark.parametrize("variant", VARIANTS)
def test_steps_at_device_columns_equal_the_eager_ones(variant, monkeypatch):
    """compile_step's steps, run uncompiled: every step attends over the whole (padded) capacity at columns
    from a device tensor, with the LM head packed once. Same tokens, logits up to float rounding, at every
    chain count, batched and alone, greedy and sampled."""
    model = tiny_model(**VARIANTS[variant])
    monkeypatch.setitem(generation.COMPILED_STEPS, "cpu", generation.decode_step)
    for prompts in (PROMPTS, [PROMPT]):
        for sampling in (Sampling(), Sampling(temperature=2.0, top_k=5, seed=3)):
            report = {}
            static = list(
                stream_batch(model, prompts, SWITCHING, 10, sampling=sampling, compile_step=True, report=report)
            )
            eager = list(stream_batch(model, prompts, SWITCHING, 10, sampling=sampling))
            assert [t for t, _ in static] == [t for t, _ in eager]
            for (_, a), (_, b) in zip(static, eager):
                assert (a - b).abs().max().item() <= 1e-5
            assert report["kv_cache"]["positions"] == 64  # a power of two: prompts of many lengths share graphs


@pytest.mark.parametrize("variant", ["colm", "air"])
def test_compiled_step_is_one_whole_graph_per_chain_count_with_the_eager_tokens(variant, monkeypatch):
    """The step torch.compile captures (on CUDA, into CUDA graphs) traces whole (fullgraph: a graph break
    would raise), once per chain count, and gives the eager greedy tokens. aot_eager stands in for
    inductor here: the same capture and functionalisation, without a C++ build per graph."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(generation.decode_step, backend=counter, fullgraph=True, dynamic=False)
    monkeypatch.setitem(generation.COMPILED_STEPS, "cpu", compiled)
    model = tiny_model(**VARIANTS[variant])
    try:
        got = list(stream_batch(model, PROMPTS, SWITCHING, 10, compile_step=True))
        again = list(stream_batch(model, PROMPTS, SWITCHING, 10, compile_step=True))  # no new graph
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == len(SWITCHING)
    eager = list(stream_batch(model, PROMPTS, SWITCHING, 10))
    assert [t for t, _ in got] == [t for t, _ in again] == [t for t, _ in eager]


def test_compiled_runs_keep_their_cache_and_head_unless_in_use_or_changed(monkeypatch):
    """A CUDA graph records the addresses it reads: a second run reuses the first run's cache and packed LM
    head, but never a cache that a running stream still uses, nor a head whose blocks changed since."""
    model = tiny_model()
    monkeypatch.setitem(generation.COMPILED_STEPS, "cpu", generation.decode_step)
    run = lambda: [t for t, _ in stream_batch(model, PROMPTS, [(0, 2)], 6, compile_step=True)]  # noqa: E731
    first = run()
    kept = generation.KEPT[model]
    cache, head = kept["cache"], kept["head"]
    assert run() == first and kept["cache"] is cache and kept["head"] is head
    running = stream_batch(model, PROMPTS, [(0, 2)], 6, compile_step=True)
    next(running)
    assert cache.in_use and run() == first and kept["cache"] is cache
    running.close()
    assert not cache.in_use
    with torch.no_grad():
        model.head_blocks()[1].mul_(2)
    changed = run()
    assert kept["head"] is not head and torch.equal(kept["head"], torch.cat(model.head_blocks(), dim=1))
    assert changed == [t for t, _ in stream_batch(model, PROMPTS, [(0, 2)], 6)]


def test_a_first_run_says_on_stderr_that_it_compiles_and_keeps_the_kernels_in_colms_cache(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("COLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setattr(generation, "COMPILED_STEPS", {})
    generation.compiled_decode_step(torch.device("cpu"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "first run: compiling the decode step" in lines[0] and str(tmp_path) in lines[0]
    kernels = tmp_path / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(kernels)
    (kernels / "fxgraph").mkdir(parents=True)  # what a compiled run leaves there
    monkeypatch.setattr(generation, "COMPILED_STEPS", {})
    generation.compiled_decode_step(torch.device("cpu"))
    assert capsys.readouterr().err == ""


def test_compile_step_is_the_default_on_cuda_only(monkeypatch):
    seen = []
    stream = generation.stream_batch
    monkeypatch.setattr(generation, "stream_batch", lambda *a: seen.append(a[-1]) or stream(*a))
    generate(tiny_model(), PROMPT, GenerateOptions(max_new_tokens=2))
    generate(tiny_model(), PROMPT, GenerateOptions(max_new_tokens=2), compile_step=False)
    assert seen == [False, False]


def test_air_query_heads_are_reordered_for_grouped_attention_and_match_gathering_the_cache():
    model = tiny_model(**VARIANTS["air"])  # chains of 2, 4, 2 query heads over chain 1's 2 KV heads
    attn = model.layers[0].attn
    assert attn.reorder == [False, False, True, True] and all(attn.sdpa_groups[1:])
    ids = torch.tensor([PROMPT, PROMPT[::-1]])
    with torch.no_grad():
        reordered = [model(ids, chains=k) for k in (2, 3)]
        for layer in model.layers:  # the path before: gather every query head's KV head from the cache
            layer.attn.reorder, layer.attn.sdpa_groups = [False] * 4, [None] + [False] * 3
        gathered = [model(ids, chains=k) for k in (2, 3)]
    for a, b in zip(reordered, gathered):
        assert (a - b).abs().max().item() <= 1e-5 and torch.equal(a.argmax(-1), b.argmax(-1))


def test_generate_batch_records_equal_single_calls_with_rows_ending_at_different_times():
    model = tiny_model(vocab_size=258, kv_heads=[1, 1, 1])
    # Rows end by EOS (0 and 2), the stop string (1 and 3), max_new_tokens ([100, 200]) and the context of
    # 64 (the last), after 5, 5, 3, 1, 12 and 5 tokens.
    prompts = PROMPTS + [[100, 200], (PROMPT * 5)[:60]]
    options = GenerateOptions(max_new_tokens=12, stop=["'"], chains=2)
    streamed = {row: [] for row in range(len(prompts))}
    batch = generate_batch(model, prompts, options, eos_id=122, on_text=lambda row, piece: streamed[row].append(piece))
    singles = [generate(model, prompt, options, eos_id=122) for prompt in prompts]
    for record in batch + singles:
        del record["timings"], record["kv_cache"]  # the batch's: its time and its cache of every row
    assert batch == singles
    assert [r["stop_reason"] for r in batch] == [
        "eos",
        "stop_string",
        "eos",
        "stop_string",
        "max_new_tokens",
        "context",
    ]
    assert [len(r["token_ids"]) for r in batch] == [5, 5, 3, 1, 12, 5]
    assert ["".join(streamed[row]) for row in range(len(prompts))] == [r["text"] for r in batch]


def test_kv_cache_holds_only_what_the_chosen_chains_need():
    colm, air = tiny_model(kv_heads=[1, 2, 1]), tiny_model(**VARIANTS["air"])
    hd, layers = colm.config.head_dim, colm.config.n_layers
    for model, chains, switch, heads in [
        (colm, 1, None, 1),
        (colm, 2, None, 3),
        (colm, 1, "4:3", 4),
        (air, 1, None, 2),
        (air, 3, None, 2),
    ]:
        cache = generate(model, PROMPT, GenerateOptions(max_new_tokens=6, chains=chains, switch=switch))["kv_cache"]
        positions = len(PROMPT) + 6 - 1  # the last token is never fed back
        assert cache == {"heads": heads, "positions": positions, "bytes": 2 * layers * heads * positions * hd * 4}


def test_sampling_seeds_top_k_and_top_p():
    model = tiny_model()
    greedy = generate(model, PROMPT, GenerateOptions(max_new_tokens=12), eos_id=-1)["token_ids"]

    def sampled(**kw):
        return generate(model, PROMPT, GenerateOptions(max_new_tokens=12, temperature=2.0, **kw), eos_id=-1)[
            "token_ids"
        ]

    assert sampled(seed=1) == sampled(seed=1)
    assert sampled(seed=1) != sampled(seed=2) != greedy
    assert sampled(top_k=1, seed=3) == greedy
    assert sampled(top_p=1e-6, seed=3) == greedy
    steps = list(stream_tokens(model, PROMPT, [(0, 3)], 30, sampling=Sampling(temperature=5.0, top_k=3, seed=4)))
    assert all(token in logits.topk(3).indices.tolist() for token, logits in steps)
    # Batched: each row is restricted to its own most likely tokens.
    greedy_rows = [r["token_ids"] for r in generate_batch(model, PROMPTS, GenerateOptions(max_new_tokens=6), eos_id=-1)]
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        rows = generate_batch(model, PROMPTS, GenerateOptions(max_new_tokens=6, temperature=2.0, **kw), eos_id=-1)
        assert [r["token_ids"] for r in rows] == greedy_rows
    steps = list(stream_batch(model, PROMPTS, [(0, 3)], 10, sampling=Sampling(temperature=5.0, top_p=0.3, seed=4)))
    for tokens, logits in steps:
        kept = (logits / 5.0).softmax(-1).sort(descending=True)  # the sampled distribution
        for row, token in enumerate(tokens):  # a kept token: the tokens more likely than it hold < 0.3
            assert kept.values[row][: kept.indices[row].tolist().index(token)].sum() < 0.3


def test_text_stream_never_splits_a_character_and_holds_back_stop_string_starts():
    text = "naïve café: 3€ 😀!"
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(b) for b in text.encode()] + [stream.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)

    stream = TextStream(ByteTokenizer(), stop=["<END>"])
    pieces = [stream.push(b) for b in b"ab<ENx<E"]
    assert "".join(pieces) == "ab<ENx" and not stream.stopped  # "<EN" waited until "x" ruled out "<END>"
    pieces = [stream.push(b) for b in b"ND>tail"]
    assert stream.stopped and "".join(pieces) == "" and stream.text == "ab<ENx"


def test_generate_stops_at_eos_stop_strings_and_the_context():
    model = tiny_model(vocab_size=258, kv_heads=[1, 1, 1])
    free = generate(model, PROMPT, GenerateOptions(max_new_tokens=20), eos_id=-1)
    assert free["stop_reason"] == "max_new_tokens" and len(free["token_ids"]) == 20
    eos = free["token_ids"][5]
    first = free["token_ids"].index(eos)
    out = generate(model, PROMPT, GenerateOptions(max_new_tokens=20), eos_id=eos)
    assert out["stop_reason"] == "eos" and out["token_ids"] == free["token_ids"][: first + 1]

    text = free["text"]
    stop = text[6:9]
    streamed = []
    out = generate(
        model,
        PROMPT,
        GenerateOptions(max_new_tokens=20, stop=["never there", stop]),
        eos_id=-1,
        on_text=streamed.append,
    )
    assert out["stop_reason"] == "stop_string" and out["text"] == text[: text.index(stop)]
    assert "".join(streamed) == out["text"]

    context = model.config.max_seq_len
    out = generate(model, (PROMPT * 5)[: context - 2], GenerateOptions(max_new_tokens=20), eos_id=-1)
    assert out["stop_reason"] == "context" and len(out["token_ids"]) == 3  # the last one is never fed back


def test_bad_generation_input_is_a_clear_error():
    model = tiny_model()
    n = model.config.n_chains
    with pytest.raises(ColmError, match="prompt is empty"):
        generate(model, [])
    with pytest.raises(ColmError, match="longer than the model's context of 64"):
        generate(model, [3] * 65)
    with pytest.raises(ColmError, match=f"outside 1..{n}"):
        generate(model, PROMPT, GenerateOptions(chains=n + 1))
    with pytest.raises(ColmError, match="^chains 0: must be >= 1"):  # None, not 0, means all chains
        generate(model, PROMPT, GenerateOptions(chains=0))
    with pytest.raises(ColmError, match="^prefill_chains 0: must be >= 1"):
        generate(model, PROMPT, GenerateOptions(prefill_chains=0))
    with pytest.raises(ColmError, match="not increasing"):
        make_schedule(n, 2, [(8, 1), (4, 3)])
    with pytest.raises(ColmError, match="not increasing"):
        make_schedule(n, 2, [(0, 1), (0, 3)])
    # Named as a Python caller names them; the CLI names its flags (tests/test_options.py).
    with pytest.raises(ColmError, match="^temperature nan: must be >= 0"):
        GenerateOptions(temperature=float("nan"))
    with pytest.raises(ColmError, match="^top_k 5 has no effect at temperature 0"):  # it was silently ignored
        GenerateOptions(top_k=5)
    with pytest.raises(
        ColmError,
        match=r"^top_p 0.9 has no effect at temperature 0 \(greedy decoding\); give "
        "temperature above 0",
    ):
        GenerateOptions(top_p=0.9)
    with pytest.raises(ColmError, match="^top_k 5 has no effect at temperature 0"):  # as a request to `colm serve`
        Sampling(top_k=5).validate()
    with pytest.raises(ColmError, match="^switch '4-1': expected POSITION:CHAINS pairs"):
        generate(model, PROMPT, GenerateOptions(switch="4-1"))


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "air"
    cfg = tiny_config(vocab_size=258, bos_token_id=256, eos_token_id=257, kv_share=True, kv_heads=[1, 0, 0])
    model = CoLM(cfg, ByteTokenizer()).init_weights(std=0.1, seed=1)
    save(model, path)
    return path


def test_cli_streams_text_and_json_matches_the_python_api(byte_checkpoint):
    args = ["generate", byte_checkpoint, "--prompt", "Hello", "--max-new-tokens", "12", "--switch", "0:3,4:1,8:2"]
    streamed = colm_in_process(*args, check=True)
    report = json.loads(colm_in_process(*args, "--json", check=True).stdout)
    from colm_core.checkpoint import load

    model = load(byte_checkpoint)
    api = generate(model, [256] + list(b"Hello"), GenerateOptions(max_new_tokens=12, switch="0:3,4:1,8:2"))
    assert report["prompt_ids"] == [256] + list(b"Hello")
    assert report["token_ids"] == api["token_ids"] and report["text"] == api["text"]
    assert streamed.stdout == api["text"] + "\n"
    assert [(s["start"], s["chains"], s["recomputed"]) for s in report["schedule"]] == [
        (0, 3, False),
        (4, 1, False),
        (8, 2, False),
    ]
    assert "time to first token" in streamed.stderr and "decode" in streamed.stderr


def test_cli_bad_input_is_one_line_and_exit_2(byte_checkpoint, tmp_path):
    """The Python API tests above cover every bad input; here one checked by the CLI, one by colm_core."""
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompt-file", tmp_path / "empty.txt"), 2, "prompt is empty"
    )
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompt", "hi", "--switch", "0:3,8:1,4:2"), 2, "not increasing"
    )
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompt", "hi", "--chains", "0"), 2, "chains 0"
    )
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompt", "hi", "--prefill-chains", "0"),
        2,
        "--prefill-chains 0: must be >= 1",
    )
    # colm_core names the parameter (tests above); the command line names the flag.
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompt", "hi", "--switch", "4-1"),
        2,
        "colm: error: --switch '4-1': expected POSITION:CHAINS pairs",
    )


def test_cli_prompts_file_prints_one_json_line_per_prompt_equal_to_single_calls(byte_checkpoint, tmp_path):
    texts = ["Hello", "A much longer prompt,\nover two lines", "x"]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": t}) for t in texts[:2]) + "\n\n" + json.dumps({"prompt": texts[2]}))
    args = ["--max-new-tokens", "10", "--switch", "0:3,4:1"]
    out = colm_in_process("generate", byte_checkpoint, "--prompts", path, *args, check=True)
    lines = out.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [line == json.dumps(r, separators=(",", ":")) for line, r in zip(lines, records)] == [True] * 3
    assert [r["prompt"] for r in records] == texts
    from colm_core.checkpoint import load

    model = load(byte_checkpoint)
    for text, record in zip(texts, records):
        single = generate(model, [256] + list(text.encode()), GenerateOptions(max_new_tokens=10, switch="0:3,4:1"))
        assert record["prompt_ids"] == [256] + list(text.encode()) and record["token_ids"] == single["token_ids"]
        assert record["text"] == single["text"] and record["stop_reason"] == single["stop_reason"]
    assert "3 prompts" in out.stderr


def test_cli_bad_prompts_file_is_one_line_and_exit_2(byte_checkpoint, tmp_path):
    path = tmp_path / "prompts.jsonl"
    for content, message in [
        ('{"prompt": "hi"}\n\nhi there\n', "line 3: expected a JSON object"),
        ('{"prompt": "hi"}\n{"prompt": ""}\n', "line 2: the prompt is empty"),
    ]:
        path.write_text(content)
        assert_one_line_error(colm_in_process("generate", byte_checkpoint, "--prompts", path), 2, message)
    assert_one_line_error(
        colm_in_process("generate", byte_checkpoint, "--prompts", path, "--prompt", "hi"),
        2,
        "exactly one of --prompt TEXT, --prompt-file FILE or --prompts FILE",
    )


def test_a_closed_stdout_pipe_is_a_normal_end(byte_checkpoint):
    """`colm generate ... | head -c 5`: the reader leaves; the process exits 0 and writes nothing to stderr."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, child_environment

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first token: the first write fails, whatever the timing
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "colm_cli",
            "generate",
            str(byte_checkpoint),
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "8",
        ],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=child_environment(None),
        timeout=300,
    )
    os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_cli_prompt_text_must_be_utf8_and_each_batch_line_is_named(byte_checkpoint, tmp_path):
    """Bytes that are not UTF-8 (in a file, or undecodable on the command line: a lone surrogate) are refused
    in one line; a byte-order mark is not part of the prompt; a batch's errors name the line."""
    gen = ["generate", byte_checkpoint, "--max-new-tokens", "4"]
    plain = json.loads(colm_in_process(*gen, "--prompt", "Hello", "--json", check=True).stdout)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfHello")
    bom_lines = tmp_path / "bom.jsonl"
    bom_lines.write_bytes(b'\xef\xbb\xbf{"prompt": "Hello"}\n')
    for source in (["--prompt-file", bom, "--json"], ["--prompts", bom_lines]):
        record = json.loads(colm_in_process(*gen, *source, check=True).stdout)
        assert (record["prompt"], record["prompt_ids"], record["token_ids"]) == (
            "Hello",
            plain["prompt_ids"],
            plain["token_ids"],
        )

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    assert_one_line_error(colm_in_process(*gen, "--prompt-file", latin1), 2, "not UTF-8 text (byte 0xe9 at offset 3)")
    assert_one_line_error(colm_in_process(*gen, "--prompt", "caf\udce9"), 2, "--prompt: not UTF-8 text")
    lines = tmp_path / "prompts.jsonl"
    for content, message in [
        ('{"prompt": "hi"}\n{"prompt": "\\ud800"}\n', "line 2: not UTF-8 text"),
        ('{"prompt": "hi"}\n\n{"prompt": "hi", "max_new_tokens": 5}\n', "line 3: unknown key 'max_new_tokens'"),
        ('{"prompt": "hi"}\n{"prompt": "' + "x" * 80 + '"}\n', "line 2: the prompt is 81 tokens, longer than"),
        ('["hi"]\n', "line 1: expected a JSON object"),
    ]:
        lines.write_text(content)
        assert_one_line_error(colm_in_process(*gen, "--prompts", lines), 2, message)
    lines.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert_one_line_error(colm_in_process(*gen, "--prompts", lines), 2, "not UTF-8 text (byte 0xe9 at offset 15)")
