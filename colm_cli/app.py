"""The `colm` command line: one small function per command, each parsing flags, calling colm_core
and printing. torch is imported inside the commands so that `colm --help` stays fast."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException

from colm_cli.common import emit_json, emit_path, err, input_path, input_paths, number_list, output_path
from colm_cli.options import ranged, with_options
from colm_core.config import INIT_STD
from colm_core.errors import WORKER_ERRORS_ENV, ColmError, Interrupted, os_error
from colm_core.init import InitOptions
from colm_core.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, TOP_P, TaskOptions, TrainOptions
from colm_core.options import from_sources as options_from

app = typer.Typer(
    name="colm",
    help="Model surgery for Chain-of-Model language models: grow, slice, tune and ship CoLMs.\n\n"
         "Every command reads a checkpoint (argument, or first line of stdin) and writes a checkpoint "
         "(path on stdout) or JSON, so commands compose in pipes: colm init | colm eval --data x.txt",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
debug = False  # --debug / COLM_DEBUG=1: let unexpected exceptions show their traceback
stopped_by: int | None = None  # the signal that interrupted the command


def show_version(value: bool) -> None:
    if value:
        from colm_core import __version__

        print(f"colm {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug_flag: Annotated[bool, typer.Option("--debug", envvar="COLM_DEBUG",
                                             help="Show the traceback of a failure (also COLM_DEBUG=1).")] = False,
):
    global debug
    debug = debug_flag

CkptArg = Annotated[Optional[str], typer.Argument(
    metavar="CKPT", help="Checkpoint directory; read from the first line of stdin when omitted.", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Output checkpoint directory (default: a new name derived from the input).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output checkpoint.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
DtypeOpt = Annotated[Optional[str], typer.Option(help="float32, bfloat16 or float16 (default: as stored).")]
VerifyOpt = Annotated[bool, typer.Option(
    "--verify/--no-verify", help="Check the result on a probe batch (loads the models; skip for minimum memory).")]


def torch_dtype(name: str | None):
    from colm_core.checkpoint import parse_dtype

    return None if name is None else parse_dtype(name)


def torch_device(name: str | None):
    from colm_core.parallel import parse_device

    return parse_device(name)


@app.command()
@with_options(InitOptions)
def init(
    dtype: Annotated[str, typer.Option(help="Stored dtype: float32, bfloat16 or float16.")] = "float32",
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Create a new, randomly initialised CoLM checkpoint."""
    from colm_core.checkpoint import history_entry, save
    from colm_core.init import init_model

    opts = options_from(InitOptions, None, options)
    out = output_path(output, Path.cwd() / "colm", opts.preset, force)
    model = init_model(opts)
    model.to(torch_dtype(dtype))
    save(model, out, force=force, history=[history_entry("init", opts.as_record())])
    err.print(f"[green]created[/] {out}: {model.config.n_chains} chains, {model.num_parameters():,} parameters")
    emit_path(out)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


@app.command()
@with_options(TrainOptions, after=1)
def train(
    ckpt: CkptArg = None,
    config: Annotated[Optional[Path], typer.Option(
        help="JSON or TOML file with any of these options (keys as the flags); flags given win.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        help="auto (newest complete step checkpoint of this output's run) or a step/run directory.")] = None,
    nproc: Annotated[Optional[int], ranged("Launch this many processes with torchrun.", AT_LEAST_ONE)] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Train a checkpoint into a new one (progress on stderr, the new checkpoint's path on stdout)."""
    if nproc is not None and "LOCAL_RANK" not in os.environ:  # not yet under torchrun
        from colm_core.parallel import launch

        stdin_input = [] if ckpt else [str(input_path(None))]  # the workers do not share our stdin
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:]) + stdin_input))
    from colm_core.checkpoint import refuse_overlap
    from colm_core.data import matched_paths
    from colm_core.run_directory import partial_dir
    from colm_core.train import train as run_training
    from colm_cli.render import TrainProgress

    opts = options_from(TrainOptions, config, options)
    path, read = input_paths(ckpt)
    # --resume is left out: its step checkpoints live in OUT.partial by design
    inputs = [*read, *matched_paths(opts.data or []), *([config] if config else [])]
    out = output_path(output, path, "train", force, inputs=inputs)
    refuse_overlap(partial_dir(out), inputs)
    progress = TrainProgress(err)
    try:
        result = run_training(path, out, opts, force=force, resume=resume, on_event=progress)
    finally:
        progress.stop()
    if os.environ.get("RANK", "0") == "0":
        emit_path(result)


def report_verification(report: dict) -> None:
    if report.get("exact") and "probe" not in report:
        err.print(f"[green]verified[/] {report['check']}")
    elif "max_abs_diff" in report:
        err.print(f"[green]verified[/] {report['check']}: max abs logit difference {report['max_abs_diff']:.3g} "
                  f"on a {report['probe'][0]}x{report['probe'][1]} probe batch")
    elif report:
        err.print(f"[yellow]not verified[/]: {report['check']}")


@app.command()
def expand(
    ckpt: CkptArg = None,
    add_chains: Annotated[int, ranged("Number of chains to append.", AT_LEAST_ONE)] = 1,
    heads: Annotated[Optional[int], ranged("Query heads of each new chain (default: the last chain's).",
                                           AT_LEAST_ONE)] = None,
    kv_heads: Annotated[Optional[int], ranged("KV heads of each new chain (default: the last chain's; "
                                              "CoLM-Air: none, chain 1's are shared).", NON_NEGATIVE)] = None,
    ffn: Annotated[Optional[int], ranged("FFN units of each new chain (default: the last chain's).",
                                         AT_LEAST_ONE)] = None,
    air: Annotated[bool, typer.Option("--air", help="Make a 1-chain model CoLM-Air: new chains read chain 1's "
                                                    "keys and values.")] = False,
    init_std: Annotated[float, ranged("Standard deviation of the new chains' random blocks.", POSITIVE)] = INIT_STD,
    seed: Annotated[int, ranged("Seed of the new chains' random blocks.", NON_NEGATIVE)] = 0,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Append chains; new LM-head blocks are zero, so the logits stay exactly the input's."""
    from colm_core.surgery import expand as expand_checkpoint

    path, read = input_paths(ckpt)
    out = output_path(output, path, "expand", force, inputs=read)
    report_verification(expand_checkpoint(path, out, add_chains=add_chains, heads=heads, kv_heads=kv_heads, ffn=ffn,
                                          air=air, init_std=init_std, seed=seed, verify=verify, force=force))
    err.print(f"[green]expanded[/] {path} by {add_chains} chain(s) -> {out}")
    emit_path(out)


@app.command(name="slice")
def slice_(
    ckpt: CkptArg = None,
    chains: Annotated[int, ranged("Keep chains 1..K: the K-chain sub-model.", AT_LEAST_ONE)] = ...,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Keep the first K chains: the result computes exactly the K-chain sub-model."""
    from colm_core.checkpoint import open_checkpoint
    from colm_core.surgery import slice_ as slice_checkpoint

    path, read = input_paths(ckpt)
    out = output_path(output, path, f"slice{chains}", force, inputs=read)
    n = open_checkpoint(path).config.n_chains
    if chains == n:
        err.print(f"--chains {chains} keeps all {n} chains: the output is a plain copy")
    report_verification(slice_checkpoint(path, out, chains=chains, verify=verify, force=force))
    err.print(f"[green]sliced[/] {path} to chains 1..{chains} -> {out}")
    emit_path(out)


@app.command(name="eval")
@with_options(TaskOptions, after=6)
def eval_(
    ckpt: CkptArg = None,
    data: Annotated[Optional[list[str]], typer.Option(
        help="Text file, directory or glob (repeat for more); default: the part of the embedded corpus that "
             "`colm train` holds out for validation.")] = None,
    chains: Annotated[Optional[str], typer.Option(help="Chain counts to evaluate, e.g. 1,2,4 (default: all).")] = None,
    seq_len: Annotated[Optional[int], ranged("Tokens per evaluation window (default: 256).", AT_LEAST_ONE)] = None,
    batch_size: Annotated[int, ranged("Windows per forward pass (with --tasks: requests per forward pass).",
                                      AT_LEAST_ONE)] = 8,
    max_tokens: Annotated[Optional[int], ranged("Evaluate at most this many tokens.", AT_LEAST_ONE)] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    **options,
):
    """Loss, perplexity and bits per byte of every k-chain sub-model, or with --tasks their lm-evaluation-harness
    scores (table on stderr, JSON on stdout)."""
    tasks = options_from(TaskOptions, None, options)
    if tasks.tasks is None:
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ColmError(f"--{given[0].replace('_', '-')} applies to lm-eval tasks; give --tasks too, e.g. "
                            "--tasks hellaswag")
    elif data or max_tokens is not None or seq_len is not None:
        flag = "--data" if data else "--max-tokens" if max_tokens is not None else "--seq-len"
        raise ColmError(f"{flag} applies to text evaluation, not to --tasks (a task's requests use the model's "
                        "context); give one of them")
    else:
        from colm_core.lm_eval_adapter import task_names  # without lm-eval: the error that says what to install

        task_names(tasks.tasks)
    from colm_core.checkpoint import load

    path = input_path(ckpt)
    model = load(path, device=torch_device(device), dtype=torch_dtype(dtype))
    n = model.config.n_chains
    ks = number_list(chains, "--chains", example="1,2,4") or list(range(1, n + 1))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ColmError(f"--chains {chains}: {bad[0]} is outside 1..{n} (this model has {n} chains)")
    if tasks.tasks is not None:
        evaluate_on_tasks(model, path, sorted(set(ks)), tasks, batch_size)
        return
    from colm_core.data import default_validation_tokens, read_texts
    from colm_core.evaluate import DEFAULT_SEQ_LEN, evaluate_tokens, token_stream
    from colm_cli.render import eval_table

    if data:
        ids = token_stream(model.tokenizer, read_texts(data))
    else:
        err.print("no --data: evaluating the held-out part of the embedded corpus (the validation split that "
                  "`colm train` without --data never trains on)", soft_wrap=True)
        ids = default_validation_tokens(model.tokenizer)
    report = evaluate_tokens(model, ids, sorted(set(ks)), seq_len=seq_len or DEFAULT_SEQ_LEN,
                             batch_size=batch_size, max_tokens=max_tokens)
    report["checkpoint"] = str(path)
    err.print(eval_table(report))
    emit_json(report)


def evaluate_on_tasks(model, path: Path, chains: list[int], tasks: TaskOptions, batch_size: int) -> None:
    """`colm eval --tasks`: lm-eval's results per chain count as JSON; whatever lm-eval prints goes to stderr."""
    from contextlib import redirect_stdout

    from colm_core.lm_eval_adapter import evaluate_tasks
    from colm_cli.render import tasks_table

    with redirect_stdout(sys.stderr):
        report = evaluate_tasks(model, tasks.tasks, chains, num_fewshot=tasks.num_fewshot, limit=tasks.limit,
                                include_path=tasks.include_path, batch_size=batch_size)
    report = {"checkpoint": str(path), **report}
    err.print(tasks_table(report))
    emit_json(report)


@app.command()
def generate(
    ckpt: CkptArg = None,
    prompt: Annotated[Optional[str], typer.Option(help="Text to continue.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="Read the prompt from this file.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help='Generate for many prompts in one batch: a JSON-lines file, one {"prompt": TEXT} per line; '
             "prints one JSON line per prompt, in order.")] = None,
    chains: Annotated[Optional[int], ranged("Chains of the sub-model that generates (default: all).",
                                            AT_LEAST_ONE)] = None,
    max_new_tokens: Annotated[int, ranged("Generate at most this many tokens.", AT_LEAST_ONE)] = 128,
    temperature: Annotated[float, ranged("Sampling temperature; 0 is greedy.", NON_NEGATIVE)] = 0.0,
    top_k: Annotated[Optional[int], ranged("Sample among the k most likely tokens (needs --temperature > 0).",
                                           AT_LEAST_ONE)] = None,
    top_p: Annotated[Optional[float], ranged("Sample among the most likely tokens of mass p "
                                             "(needs --temperature > 0).", TOP_P)] = None,
    seed: Annotated[int, ranged("Seed of the sampler.", NON_NEGATIVE)] = 0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when the text contains this (repeatable).")] = None,
    switch: Annotated[Optional[str], typer.Option(
        help="Change the chain count at generated positions, e.g. 0:4,32:1,64:2.")] = None,
    prefill_chains: Annotated[Optional[int], ranged(
        "Chains that build the prompt's KV cache (default: 1 for CoLM-Air, else --chains).", AT_LEAST_ONE)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Continue a prompt: text streams to stdout as it comes, timings go to stderr."""
    from colm_core.checkpoint import load
    from colm_core.generation import Sampling, check_prompt, generate_batch, parse_switch

    Sampling(temperature, top_k, top_p, seed).validate()  # before the model loads: a bad flag fails at once

    if sum(source is not None for source in (prompt, prompt_file, prompts)) != 1:
        raise ColmError("give the prompt with exactly one of --prompt TEXT, --prompt-file FILE or --prompts FILE")
    if prompts is not None:
        named = read_prompts(prompts)
    elif prompt_file is not None:
        named = {"the prompt": read_utf8(prompt_file, "--prompt-file")}
    else:
        named = {"the prompt": utf8_text(prompt, "--prompt")}
    texts = list(named.values())
    if not texts[0]:
        raise ColmError("the prompt is empty; give some text to continue")
    model = load(input_path(ckpt), device=torch_device(device), dtype=torch_dtype(dtype))
    prompt_ids = [model.tokenizer.encode(text, add_special_tokens=True) for text in texts]
    for name, ids in zip(named, prompt_ids):
        check_prompt(model.config, ids, name)

    def stream(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    results = generate_batch(model, prompt_ids, max_new_tokens=max_new_tokens, chains=chains,
                             switch=parse_switch(switch or ""), prefill_chains=prefill_chains,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop or [],
                             on_text=None if json_out or prompts else stream)
    for seg in results[0]["schedule"]:
        if seg["recomputed"]:
            err.print(f"switching up to {seg['chains']} chains at token {seg['start']}: recomputed the keys/values "
                      "of the whole sequence (only CoLM-Air switches without recomputing)", soft_wrap=True)
    t = results[0]["timings"]  # the whole batch's
    decode = f"{t['decode_tokens_per_s']:.1f}" if t["decode_tokens_per_s"] is not None else "-"
    tokens = sum(len(r["token_ids"]) for r in results)
    what = f"{len(results)} prompts, {tokens} tokens" if prompts else f"{tokens} tokens ({results[0]['stop_reason']})"
    err.print(f"{what}; time to first token "
              f"{t['time_to_first_token_s'] * 1000:.0f} ms, prefill {t['prefill_tokens_per_s']:.0f} tokens/s "
              f"at {results[0]['prefill_chains']} chain(s), decode {decode} tokens/s", highlight=False, soft_wrap=True)
    if prompts is not None:
        for text, result in zip(texts, results):
            print(json.dumps({"prompt": text, **result}, separators=(",", ":")), flush=True)
    elif json_out:
        emit_json({"prompt": texts[0], **results[0]})
    else:
        stream(0, "\n")


def read_prompts(path: Path) -> dict[str, str]:
    """The prompts of a JSON-lines file, one {"prompt": TEXT} object per line (blank lines skipped), each
    under the name its errors give it: "--prompts FILE line N: the prompt"."""
    texts = {}
    for number, line in enumerate(read_utf8(path, "--prompts").splitlines(), 1):
        if not line.strip():
            continue
        where = f"--prompts {path} line {number}"
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ColmError(f'{where}: expected a JSON object like {{"prompt": "Once upon"}}')
        unknown = sorted(set(record) - {"prompt"})
        if unknown:
            raise ColmError(f'{where}: unknown key {unknown[0]!r}; a line holds only {{"prompt": TEXT}}')
        text = utf8_text(record["prompt"], where)
        if not text:
            raise ColmError(f"{where}: the prompt is empty; give some text to continue")
        texts[f"{where}: the prompt"] = text
    if not texts:
        raise ColmError(f'--prompts {path}: no prompts; write one {{"prompt": TEXT}} object per line')
    return texts


def read_utf8(path: Path, flag: str) -> str:
    """A text file's contents: UTF-8, a leading byte-order mark dropped; other bytes are refused."""
    if not path.is_file():
        raise ColmError(f"{flag} {path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ColmError(f"{flag} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "convert it to UTF-8") from None


def utf8_text(text: str, where: str) -> str:
    """Text that UTF-8 can encode: not bytes the command line could not decode, nor a lone surrogate
    (a JSON "\\ud800"), which no tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ColmError(f"{where}: not UTF-8 text ({text[e.start]!r} at character {e.start}: a byte the command "
                        "line could not decode, or a lone surrogate); give UTF-8 text") from None
    return text


@app.command()
def serve(
    ckpt: CkptArg = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")]
        = "127.0.0.1",
    port: Annotated[int, ranged("Port to listen on; 0 picks a free one (the URL is printed on stdout).",
                                NON_NEGATIVE)] = 8000,
    name: Annotated[Optional[str], typer.Option(
        help="Model name clients ask for (default: the checkpoint directory's name); NAME@k is the k-chain "
             "sub-model.")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="COLM_API_KEY", show_envvar=True,
        help="Require `Authorization: Bearer KEY`; prefer COLM_API_KEY in the environment, which ps does not "
             "show.")] = None,
    elastic: Annotated[bool, typer.Option("--elastic", help="Serve NAME@auto: the largest chain count whose "
                                                            "expected queue wait stays under --max-wait-ms.")] = False,
    max_wait_ms: Annotated[float, ranged("The queue wait NAME@auto keeps under (with --elastic).", POSITIVE)] = 500.0,
    max_prompt_tokens: Annotated[Optional[int], ranged("Longest prompt accepted (default: the model's context).",
                                                       AT_LEAST_ONE)] = None,
    max_tokens: Annotated[int, ranged("Largest max_tokens a request may ask for.", AT_LEAST_ONE)] = 512,
    max_body_bytes: Annotated[int, ranged("Largest request body.", AT_LEAST_ONE)] = 1 << 20,
    max_concurrent: Annotated[int, ranged("Prompts queued or running at once; more are refused with 429.",
                                          AT_LEAST_ONE)] = 64,
    max_batch: Annotated[int, ranged("Prompts per decode step; more wait in the queue.", AT_LEAST_ONE)] = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Serve every k-chain sub-model of a checkpoint over an OpenAI-compatible HTTP API, batching concurrent
    requests, until Ctrl-C or SIGTERM (exit 130). Prints the base URL on stdout."""
    from colm_cli.serve import bind, run, url_of  # without the extra: the error that says what to install
    from colm_core.checkpoint import load
    from colm_core.serving import ServeLimits, Service, chat_template

    path = input_path(ckpt)
    sock = bind(host, port)
    model = load(path, device=torch_device(device), dtype=torch_dtype(dtype))
    limits = ServeLimits(max_prompt_tokens=min(max_prompt_tokens or model.config.max_seq_len,
                                               model.config.max_seq_len),
                         max_tokens=max_tokens, max_body_bytes=max_body_bytes, max_concurrent=max_concurrent,
                         max_batch=max_batch)
    name = name or Path(path).resolve().name
    service = Service(model, name, limits, chat_template(path), path, api_key or None,
                      max_wait_ms / 1000 if elastic else None)
    err.print(f"[green]serving[/] {name} ({model.config.n_chains} chains: {name}@1..{name}@{model.config.n_chains}"
              f"{f', {name}@auto' if elastic else ''}) on {url_of(sock)}"
              f"{'' if api_key else ' without an API key'}; Ctrl-C stops", highlight=False, soft_wrap=True)
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/]: --host {host} is reachable from the network and no API key is set; set "
                  "COLM_API_KEY to require one", highlight=False, soft_wrap=True)
    print(url_of(sock), flush=True)
    run(service, sock)


@app.command()
def inspect(ckpt: CkptArg = None,
            json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
            verify: Annotated[bool, typer.Option(
                "--verify", help="Re-hash the files and compare them with the sha256 digests recorded when the "
                                 "checkpoint was written; exit 1 naming the first that differs or that has none.")] = False):
    """Show a checkpoint's chains, parameters, shapes, config and history (a Hugging Face directory is read
    in place, not imported)."""
    from colm_cli.render import render
    from colm_core.inspect import describe

    report = describe(input_path(ckpt, import_hf=False), verify=verify)
    render(report, err)
    if json_out:
        emit_json(report)


@app.command(name="import")
def import_(
    hf_dir: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A Hugging Face LlamaForCausalLM directory (config.json, safetensors), a `colm export --format hf` "
             "directory, an hf://ORG/NAME reference (@REVISION optional), or a Llama GGUF file (FILE.gguf; "
             "quantized weights are dequantized to float32).")],
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Convert a Hugging Face Llama directory or a Llama GGUF file into a 1-chain CoLM, or read a `--format hf`
    export back."""
    from colm_core.gguf import import_gguf, is_gguf_file
    from colm_core.llama import import_hf
    from colm_core.resolve import resolve_input

    source = resolve_input(hf_dir)
    gguf = is_gguf_file(source)
    name = source.resolve().stem if gguf else source.resolve().name
    out = output_path(output, Path.cwd() / name, "colm", force, inputs=[source])
    report_verification((import_gguf if gguf else import_hf)(source, out, verify=verify, force=force))
    err.print(f"[green]imported[/] {hf_dir} -> {out}")
    emit_path(out)


@app.command()
def export(
    ckpt: CkptArg = None,
    fmt: Annotated[str, typer.Option("--format", help="hf-llama: a standard LlamaForCausalLM (1-chain models); "
                                             "hf: any CoLM, loaded with trust_remote_code=True.")] = ...,
    dtype: DtypeOpt = None,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Write a directory that Hugging Face transformers loads (no quantization)."""
    from colm_core.export import export as export_checkpoint

    path, read = input_paths(ckpt)
    out = output_path(output, path, fmt, force, inputs=read)
    report_verification(export_checkpoint(path, out, fmt=fmt, dtype=torch_dtype(dtype), verify=verify,
                                          force=force))
    err.print(f"[green]exported[/] {path} as {fmt} -> {out}")
    emit_path(out)


@app.command()
def pull(
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID",
                                           help="Hub model repo: ORG/NAME or hf://ORG/NAME[@REVISION].")],
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit (default: main).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Also copy the files into this directory (default: print the Hub-cache path).")] = None,
    force: ForceOpt = False,
):
    """Download a colm checkpoint or a Llama transformers repo into the Hugging Face cache; print its path.

    Resumable, shared with other Hub tools, and offline with HF_HUB_OFFLINE=1 once cached."""
    from colm_core.hub import pull as pull_repo

    path = pull_repo(repo_id, revision, output, force)
    err.print(f"[green]pulled[/] {repo_id} -> {path}", soft_wrap=True)
    emit_path(path)


@app.command()
def push(
    ckpt: Annotated[Optional[str], typer.Argument(
        metavar="CKPT", show_default=False,
        help="Checkpoint directory; when only REPO_ID is given, it is read from stdin.")] = None,
    repo_id: Annotated[Optional[str], typer.Argument(
        metavar="REPO_ID", show_default=False, help="Hub model repo: ORG/NAME.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private (if it does not exist).")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing; default: main).")] = None,
    license: Annotated[Optional[str], typer.Option(help="License id for the card, e.g. apache-2.0.")] = None,
):
    """Upload a checkpoint with a fresh model card; print hf://ORG/NAME@COMMIT.

    The token comes from HF_TOKEN or `hf auth login`, never from a flag."""
    from colm_core.hub import parse_reference, push as push_checkpoint

    if repo_id is None:
        ckpt, repo_id = None, ckpt
    if repo_id is None:
        raise ColmError("no REPO_ID: `colm push CKPT ORG/NAME`, or `... | colm push ORG/NAME`")
    parse_reference(repo_id, revision)  # a bad id is refused before an hf:// input is downloaded
    uri = push_checkpoint(input_path(ckpt), repo_id, private=private, revision=revision, license=license)
    err.print(f"[green]pushed[/] {uri}")
    print(uri, flush=True)


def report(line: str) -> None:
    """Print the line that ends a failed command. A torchrun worker of `train --nproc` leaves it in a file
    instead, so that the launcher prints one line for all workers (they usually fail alike)."""
    errors_dir = os.environ.get(WORKER_ERRORS_ENV)
    if errors_dir and "RANK" in os.environ:
        Path(errors_dir, os.environ["RANK"]).write_text(line + "\n")
    else:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


def stop_on_signal(signum, frame) -> None:
    """SIGINT and SIGTERM both stop a command as Ctrl-C does: the exception unwinds through the
    cleanup of temporary directories, and main() exits 130."""
    global stopped_by
    stopped_by = signum
    raise KeyboardInterrupt


def silence_stdout() -> None:
    """Point stdout's file descriptor at /dev/null: what is still buffered for a closed pipe is then
    flushed there at exit, instead of failing again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (the in-process test harness's stdout)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def main() -> None:
    """Entry point: run the app, turning every expected failure into one line on stderr and an exit code."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop_on_signal)
    try:
        code = app(prog_name="colm", standalone_mode=False)  # typer turns KeyboardInterrupt into 130
    except SystemExit as e:
        # typer's answer to a closed stdout is exit 1, but in a pipeline (`colm generate | head`) the
        # reader leaving is a normal end: exit 0, and nothing more is written to the closed pipe.
        if not isinstance(e.__context__, BrokenPipeError):
            raise
        silence_stdout()
        code = 0
    except KeyboardInterrupt:
        code = 130
    except typer.Abort:
        report("colm: aborted")
        code = 130
    except TyperException as e:  # click's usage errors, raised by typer's bundled click
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        if e.format_message():  # empty after `colm` alone, which has printed the help already
            report(f"colm: error: {e.format_message().rstrip('.')}{hint}")
        code = getattr(e, "exit_code", 2)
    except Interrupted as e:  # training stopped at a step boundary and says what it saved
        report(f"colm: {e}")
        code = e.exit_code
    except (ColmError, OSError) as e:
        if debug:
            raise
        e = os_error(e) if isinstance(e, OSError) else e
        report(f"colm: error: {e}")
        code = e.exit_code
    except Exception as e:  # an unexpected failure is still one line unless --debug asks for more
        if debug:
            raise
        report(f"colm: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        code = 1
    if stopped_by is not None:
        report("colm: interrupted")
        code = 130
    sys.exit(code or 0)
