"""`colm serve` on loopback, with real clients: the `openai` package, raw HTTP for bad requests, lm-eval's
`local-completions` model. Greedy answers equal `colm generate`'s; concurrent requests of mixed chain counts
share decode steps and still each equal their own `colm generate`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from colm_core.checkpoint import save
from colm_core.generation import Sampling, generate
from colm_core.options import GenerateOptions
from colm_core.serving import Job, ServeLimits, Service, chat_template
from tests.conftest import (
    REPO,
    TASKS_DIR,
    assert_one_line_error,
    child_environment,
    colm_in_process,
    colm_in_subprocess,
    tiny_model,
)
from tests.test_lm_eval import TASKS

pytest.importorskip("starlette", reason="colm[serve] is not installed")
from colm_cli.serve import bind, make_server, url_of  # noqa: E402

BYTE_VOCAB = dict(vocab_size=258, bos_token_id=256, eos_token_id=257, max_seq_len=256)
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = ["Once upon a time", "It was a dark and stormy night", "Hi", "The quick brown fox jumps"]


def model_of(air: bool):
    return tiny_model(
        heads=[2, 2, 2], kv_heads=[1, 0, 0] if air else [1, 1, 2], ffn=[24, 16, 20], kv_share=air, **BYTE_VOCAB
    )


@contextmanager
def served(model, checkpoint=None, api_key=None, max_wait_s=None, **limits):
    """A Service behind uvicorn in a thread, on a free loopback port: yields (base URL, service)."""
    limits = ServeLimits(**{"max_prompt_tokens": model.config.max_seq_len, **limits})
    template = chat_template(checkpoint) if checkpoint else None
    service = Service(model, "tiny", limits, template, checkpoint, api_key, max_wait_s)
    sock = bind("127.0.0.1", 0)
    server = make_server(service, graceful_s=5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield url_of(sock), service
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        service.close()
        sock.close()


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None, method: str = "POST"):
    """(status, JSON body) of a request; errors are answers too."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def greedy(model, prompt, chains, max_tokens, stop=()):
    return generate(model, prompt, GenerateOptions(chains=chains, max_new_tokens=max_tokens, stop=list(stop)))


def test_openai_client_completions_chat_and_streams_equal_colm_generate(tmp_path):
    """The `openai` client against a 3-chain CoLM: /v1/models lists NAME and NAME@k; greedy completions
    (plain, streamed, with a stop string) and chat completions (the checkpoint's template) give
    `colm generate`'s text for every k, with token usage."""
    openai = pytest.importorskip("openai")
    model = model_of(air=False)
    save(model, tmp_path / "tiny")
    (tmp_path / "tiny" / "chat_template.jinja").write_text(TEMPLATE)
    cli = json.loads(
        colm_in_process(
            "generate",
            tmp_path / "tiny",
            "--prompt",
            PROMPTS[0],
            "--chains",
            "2",
            "--max-new-tokens",
            "12",
            "--json",
            check=True,
        ).stdout
    )
    with served(model, tmp_path / "tiny") as (url, _):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list().data] == ["tiny", "tiny@1", "tiny@2", "tiny@3"]
        out = client.completions.create(model="tiny@2", prompt=PROMPTS[0], max_tokens=12, temperature=0)
        assert out.choices[0].text == cli["text"] and out.model == "tiny@2"
        assert out.usage.prompt_tokens == cli["prompt_tokens"]
        assert out.usage.completion_tokens == len(cli["token_ids"])
        for k in (1, 3):
            expected = greedy(model, PROMPTS[1], k, 10)
            out = client.completions.create(model=f"tiny@{k}", prompt=PROMPTS[1], max_tokens=10, temperature=0)
            assert out.choices[0].text == expected["text"]
            pieces = client.completions.create(
                model=f"tiny@{k}", prompt=PROMPTS[1], max_tokens=10, temperature=0, stream=True
            )
            chunks = list(pieces)
            assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["text"]
            assert chunks[-1].usage.completion_tokens == len(expected["token_ids"])
        text = greedy(model, PROMPTS[2], 3, 30)["text"]
        stop = text[5:7]  # a stop string that occurs: cut, as `colm generate --stop` cuts it
        out = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=30, temperature=0, stop=[stop])
        assert out.choices[0].text == greedy(model, PROMPTS[2], 3, 30, [stop])["text"]
        assert out.choices[0].finish_reason == "stop"

        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
        ids = model.tokenizer.encode("<|system|>Be brief.\n<|user|>Hello\n<|assistant|>")
        expected = greedy(model, ids, 1, 8)
        chat = client.chat.completions.create(model="tiny@1", messages=messages, max_tokens=8, temperature=0)
        assert chat.choices[0].message.content == expected["text"] and chat.usage.prompt_tokens == len(ids)
        streamed = client.chat.completions.create(
            model="tiny@1", messages=messages, max_tokens=8, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected["text"]

        sampled = [
            client.completions.create(
                model="tiny@2", prompt=PROMPTS[0], max_tokens=8, temperature=0.9, top_p=0.9, seed=seed
            )
            .choices[0]
            .text
            for seed in (1, 1, 2)
        ]
        reference = generate(
            model, PROMPTS[0], GenerateOptions(chains=2, max_new_tokens=8, temperature=0.9, top_p=0.9, seed=1)
        )
        assert sampled[0] == sampled[1] == reference["text"]  # the seed makes sampling repeatable


def run_job(service: Service, prompt, chains, max_tokens, echo=False, logprobs=None) -> Job:
    done = threading.Event()
    job = Job(
        prompt,
        chains,
        max_tokens,
        Sampling(),
        [],
        logprobs,
        echo,
        on_event=lambda job, piece: piece or not job.finished_at or done.set(),
    )
    service.engine.submit([job])
    assert done.wait(60)
    return job


def start_long_job(service: Service, prompt, chains, max_tokens) -> Job:
    """A greedy job submitted to the engine, returned once it has produced its first piece (it is running)."""
    first = threading.Event()
    job = Job(prompt, chains, max_tokens, Sampling(), [], None, False, on_event=lambda job, piece: first.set())
    service.engine.submit([job])
    assert first.wait(30)
    return job


@pytest.mark.parametrize("air", [False, True], ids=["colm", "air"])
def test_concurrent_clients_of_mixed_chain_counts_each_get_colm_generate(air):
    """16 clients x 3 requests, chain counts 1..3 and NAME, batched 6 rows per step: no errors, nothing lost,
    every greedy answer equal to its prompt alone through `colm generate`, fewer decode steps than tokens
    (steps were shared), and nothing left in the engine afterwards."""
    model = model_of(air)
    cases = [
        (PROMPTS[i % 4], ["tiny", "tiny@1", "tiny@2", "tiny@3"][i // 4 % 4], 4 + 3 * (i % 4)) for i in range(48)
    ]  # 16 different requests, each 3 times
    expected = {case: greedy(model, case[0], int(case[1].partition("@")[2] or 3), case[2]) for case in set(cases)}
    with served(model, max_batch=6, max_concurrent=64) as (url, service):

        def ask(case):
            prompt, name, max_tokens = case
            return post(
                f"{url}/completions", {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
            )

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, cases))
        for case, (status, body) in zip(cases, answers):
            assert status == 200, body
            assert body["choices"][0]["text"] == expected[case]["text"], case
            assert body["usage"]["completion_tokens"] == len(expected[case]["token_ids"])
        engine = service.engine
        assert engine.stats["steps"] < sum(len(e["token_ids"]) for e in map(expected.get, cases))
        assert engine.in_flight == 0 and engine.rows == [] and engine.cache is None


def test_a_larger_chain_count_joining_recomputes_the_running_rows():
    """CoLM without Air: a 3-chain job joins 1-chain rows mid-generation; their caches lack chains 2-3, so
    they are prefilled again at 3 chains, and every answer still equals `colm generate`'s."""
    model = model_of(air=False)
    with served(model) as (_, service):
        long = start_long_job(service, model.tokenizer.encode(PROMPTS[1], True), 1, 120)
        joined = run_job(service, model.tokenizer.encode(PROMPTS[0], True), 3, 20)
        while not long.finished_at:
            time.sleep(0.01)
    assert service.engine.stats["recomputed_rows"] >= 1
    assert long.continuation.tokens == greedy(model, PROMPTS[1], 1, 120)["token_ids"]
    assert joined.continuation.tokens == greedy(model, PROMPTS[0], 3, 20)["token_ids"]


def test_bad_requests_get_openai_errors_and_the_server_lives_on():
    model = model_of(air=False)
    key = {"Authorization": "Bearer s3cret"}
    ok = {"model": "tiny@1", "prompt": "Hi", "max_tokens": 2}
    with served(
        model, api_key="s3cret", max_tokens=32, max_body_bytes=2000, max_concurrent=2, max_prompt_tokens=100
    ) as (url, _):
        cases = [
            ("/completions", ok, {}, None, 401, "API key"),
            ("/completions", ok, {"Authorization": "Bearer wrong"}, None, 401, "API key"),
            ("/completions", None, key, b"{not json", 400, "not valid JSON"),
            ("/completions", None, key, b"[1, 2]", 400, "JSON object"),
            ("/completions", None, key, b"x" * 3000, 413, "larger than 2000 bytes"),
            ("/completions", {**ok, "model": "gpt-4"}, key, None, 404, "unknown model 'gpt-4'"),
            ("/completions", {**ok, "model": "tiny@4"}, key, None, 404, "unknown model 'tiny@4'"),
            ("/completions", {**ok, "model": "tiny@auto"}, key, None, 404, "--elastic"),
            ("/completions", {**ok, "max_tokens": "2"}, key, None, 400, "`max_tokens` must be"),
            ("/completions", {**ok, "max_tokens": 33}, key, None, 400, "0..32"),
            ("/completions", {**ok, "max_tokens": 0}, key, None, 400, "echo"),
            ("/completions", {**ok, "temperature": True}, key, None, 400, "`temperature`"),
            ("/completions", {**ok, "prompt": 5}, key, None, 400, "`prompt` must be"),
            ("/completions", {**ok, "prompt": ""}, key, None, 400, "empty"),
            ("/completions", {**ok, "prompt": [1, 300]}, key, None, 400, "outside the vocabulary"),
            ("/completions", {**ok, "prompt": "x" * 150}, key, None, 400, "at most 100"),
            ("/completions", {**ok, "prompt": ["a", "b", "c"]}, key, None, 429, "--max-concurrent"),
            ("/completions", {**ok, "n": 2}, key, None, 400, "`n` must be 1"),
            ("/completions", {**ok, "logprobs": 9}, key, None, 400, "`logprobs`"),
            ("/completions", {**ok, "stop": [1]}, key, None, 400, "`stop`"),
            ("/completions", {**ok, "stop": "x" * 257}, key, None, 400, "at most 256 characters"),
            ("/completions", {**ok, "best_of": 3}, key, None, 400, "`best_of` is not supported"),
            ("/completions", {**ok, "file": "/etc/passwd"}, key, None, 400, "unknown field `file`"),
            ("/completions", {"prompt": "Hi"}, key, None, 400, "`model` is required"),
            (
                "/chat/completions",
                {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]},
                key,
                None,
                400,
                "no chat template",
            ),
            ("/nowhere", ok, key, None, 404, "/v1/nowhere"),
        ]
        for path, body, headers, raw, status, message in cases:
            got, answer = post(url + path, body, headers, raw)
            assert got == status and message in answer["error"]["message"], (path, body, got, answer)
            assert answer["error"]["code"] == status and answer["error"]["type"]
        got, answer = post(url + "/completions", None, key, method="GET")
        assert got == 405 and answer["error"]["code"] == 405
        got, answer = post(url + "/completions", ok, key)
        assert got == 200 and answer["usage"]["completion_tokens"] == 2


def test_a_client_that_leaves_a_stream_frees_its_place():
    """A streaming client that disconnects after the first event: its job is cancelled and leaves the batch."""
    import http.client

    model = model_of(air=False)  # its greedy answer to "Hi" has no EOS: only the disconnect ends it early
    with served(model) as (url, service):
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request(
            "POST",
            "/v1/completions",
            json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 200, "stream": True, "temperature": 0}),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        connection.close()
        deadline = time.monotonic() + 20
        while service.engine.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.engine.in_flight == 0 and service.engine.stats["cancelled"] == 1
        assert post(f"{url}/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2})[0] == 200


def test_a_failing_step_answers_its_requests_with_500_and_the_engine_goes_on():
    model = model_of(air=True)
    with served(model) as (url, service):
        forward = model.hidden_states
        calls = []

        def fails_once(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("out of memory, say")
            return forward(*args, **kwargs)

        model.hidden_states = fails_once
        status, body = post(f"{url}/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 4})
        assert status == 500 and "generation failed: RuntimeError: out of memory, say" in body["error"]["message"]
        assert service.engine.in_flight == 0
        status, body = post(f"{url}/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 4})
        assert status == 200 and body["usage"]["completion_tokens"] == 4
        del model.hidden_states


def test_echo_logprobs_score_the_prompt_as_colm_scores_it():
    """echo + logprobs: the prompt's tokens scored by the k-chain sub-model (what lm-eval's loglikelihood
    reads), equal to a full forward of the prompt; max_tokens 0 scores without generating."""
    import torch

    model = model_of(air=True)
    ids = model.tokenizer.encode(PROMPTS[3], True)
    with served(model) as (url, _):
        for k in (1, 3):
            status, body = post(
                f"{url}/completions",
                {"model": f"tiny@{k}", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0},
            )
            assert status == 200, body
            lp = body["choices"][0]["logprobs"]
            with torch.no_grad():
                reference = torch.log_softmax(model(torch.tensor([ids]), k)[0, :-1].float(), -1)
            expected = reference.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
            assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == len(ids)
            assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
            assert body["choices"][0]["text"] == PROMPTS[3] and body["usage"]["completion_tokens"] == 0


def test_elastic_auto_takes_the_largest_chain_count_the_wait_bound_allows():
    """NAME@auto on an idle server gets all chains; behind a long job with a bound no step can meet, 1 chain.
    The response names the chain count that served it."""
    model = model_of(air=True)
    with served(model, max_wait_s=1e-9) as (url, service):
        status, body = post(f"{url}/completions", {"model": "tiny@auto", "prompt": "Hi", "max_tokens": 3})
        assert status == 200 and body["model"] == "tiny@3"
        start_long_job(service, model.tokenizer.encode(PROMPTS[1], True), 3, 200)
        status, body = post(f"{url}/completions", {"model": "tiny@auto", "prompt": "Hi", "max_tokens": 3})
        assert status == 200 and body["model"] == "tiny@1"
        assert "tiny@auto" in [m["id"] for m in post(f"{url}/models", None, method="GET")[1]["data"]]


def test_lm_eval_local_completions_against_colm_serve_equals_colm_eval_tasks(tmp_path, offline):
    """lm-eval's `local-completions` model talking to `colm serve` gives `colm eval --tasks`'s numbers for
    chain counts 1 and 2 on the tiny local tasks (rolling log-likelihood, multiple choice, generation).
    lm-eval tokenizes with the checkpoint's tokenizer as `colm export` writes it (add_bos_token: a sequence
    starts as the tokenizer starts one, as in `colm eval`)."""
    lm_eval = pytest.importorskip("lm_eval")
    from colm_core.export import export
    from colm_core.lm_eval_adapter import task_manager

    model = tiny_model(heads=[2, 2], kv_heads=[1, 1], ffn=[24, 16], **BYTE_VOCAB)
    save(model, tmp_path / "tiny")
    export(tmp_path / "tiny", tmp_path / "hf", fmt="hf", verify=False)
    proc = colm_in_process(
        "eval",
        tmp_path / "tiny",
        "--tasks",
        ",".join(TASKS),
        "--include-path",
        TASKS_DIR,
        "--limit",
        "3",
        "--batch-size",
        "2",
        cwd=TASKS_DIR,
        env=offline,
        check=True,
    )
    reference = json.loads(proc.stdout)["results"]
    compared = []
    with served(model) as (url, service):
        for k in ("1", "2"):
            args = (
                f"model=tiny@{k},base_url={url}/completions,tokenizer_backend=huggingface,"
                f"tokenizer={tmp_path / 'hf'},add_bos_token=True,max_length={model.config.max_seq_len + 1},"
                "batch_size=2,num_concurrent=1,max_retries=1"
            )
            out = lm_eval.simple_evaluate(
                model="local-completions",
                model_args=args,
                tasks=TASKS,
                limit=3,
                task_manager=task_manager(TASKS, TASKS_DIR),
                bootstrap_iters=0,
            )
            for task in TASKS:
                for metric, value in reference[k]["results"][task].items():
                    if "_stderr," in metric or metric == "alias":
                        continue
                    got = out["results"][task][metric]
                    assert got == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), (
                        k,
                        task,
                        metric,
                    )
                    compared.append(metric)
    assert {"bits_per_byte,none", "acc,none", "exact_match,none"} <= set(compared)
    assert reference["1"]["results"] != reference["2"]["results"]  # two different sub-models, both matched
    assert service.engine.stats["steps"] > 0


def test_colm_serve_prints_its_url_answers_and_stops_on_sigterm_with_130(tmp_path):
    """The real process: the URL on stdout, COLM_API_KEY required, and SIGTERM during a streamed answer lets
    that answer finish before the process exits 130."""
    import http.client

    save(model_of(air=False), tmp_path / "tiny")
    proc = subprocess.Popen(
        [sys.executable, "-m", "colm_cli", "serve", str(tmp_path / "tiny"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_environment({"COLM_API_KEY": "k"}),
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        key = {"Authorization": "Bearer k"}
        status, body = post(f"{url}/completions", {"model": "tiny@2", "prompt": "Hi", "max_tokens": 3}, key)
        assert status == 200 and body["model"] == "tiny@2"
        assert post(f"{url}/models", None, method="GET")[0] == 401  # COLM_API_KEY applies
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request(
            "POST",
            "/v1/completions",
            json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 200, "stream": True, "temperature": 0}),
            {"Content-Type": "application/json", **key},
        )
        response = connection.getresponse()
        assert response.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["usage"]["completion_tokens"] == 200
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "colm: interrupted" and "Traceback" not in stderr


def test_a_port_in_use_is_one_line_naming_the_fix(tmp_path):
    save(model_of(air=False), tmp_path / "tiny")
    taken = bind("127.0.0.1", 0)
    try:
        proc = colm_in_process("serve", tmp_path / "tiny", "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert_one_line_error(proc, 2, "choose another --port, or 0 for any free one")


def test_serve_without_the_extra_installed_is_one_line_naming_it(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n\n\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    proc = colm_in_subprocess(
        "serve", tmp_path / "nothing", env={"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    )
    assert_one_line_error(proc, 2, "pip install 'colm[serve]'")
