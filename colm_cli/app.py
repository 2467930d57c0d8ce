"""The `colm` command line: one small function per command, each reading its options (one dataclass per
command, colm_core/options.py, whose fields colm_cli/options.py makes flags), calling colm_core and
printing. torch is imported inside the commands so that `colm --help` stays fast."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from colm_cli.common import emit_json, emit_path, err, input_path, input_paths, output_path
from colm_cli.options import ranged, with_options
from colm_core.errors import WORKER_ERRORS_ENV, ColmError, Interrupted, OptionError, os_error
from colm_core.init import InitOptions
from colm_core.options import (
    AT_LEAST_ONE,
    EVAL_SEQ_LEN,
    EvalOptions,
    ExpandOptions,
    ExportOptions,
    GenerateOptions,
    InspectOptions,
    PullOptions,
    PushOptions,
    ServeOptions,
    SliceOptions,
    TrainOptions,
)
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
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug_flag: Annotated[
        bool, typer.Option("--debug", envvar="COLM_DEBUG", help="Show the traceback of a failure (also COLM_DEBUG=1).")
    ] = False,
):
    global debug
    debug = debug_flag


CkptArg = Annotated[
    str | None,
    typer.Argument(
        metavar="CKPT", help="Checkpoint directory; read from the first line of stdin when omitted.", show_default=False
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output checkpoint directory (default: a new name derived from the input)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output checkpoint.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: as stored).")]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify/--no-verify", help="Check the result on a probe batch (loads the models; skip for minimum memory)."
    ),
]


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
    config: Annotated[
        Path | None,
        typer.Option(help="JSON or TOML file with any of these options (keys as the flags); flags given win."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="auto (newest complete step checkpoint of this output's run) or a step/run directory."),
    ] = None,
    nproc: Annotated[int | None, ranged("Launch this many processes with torchrun.", AT_LEAST_ONE)] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Train a checkpoint into a new one (progress on stderr, the new checkpoint's path on stdout)."""
    if nproc is not None and "LOCAL_RANK" not in os.environ:  # not yet under torchrun
        from colm_core.parallel import launch

        stdin_input = [] if ckpt else [str(input_path(None))]  # the workers do not share our stdin
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:]) + stdin_input))
    from colm_cli.render import TrainProgress
    from colm_core.checkpoint import refuse_overlap
    from colm_core.data import matched_paths
    from colm_core.run_directory import partial_dir
    from colm_core.train import train as run_training

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
        err.print(
            f"[green]verified[/] {report['check']}: max abs logit difference {report['max_abs_diff']:.3g} "
            f"on a {report['probe'][0]}x{report['probe'][1]} probe batch"
        )
    elif report:
        err.print(f"[yellow]not verified[/]: {report['check']}")


@app.command()
@with_options(ExpandOptions, after=1)
def expand(
    ckpt: CkptArg = None,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Append chains; new LM-head blocks are zero, so the logits stay exactly the input's."""
    from colm_core.surgery import expand as expand_checkpoint

    opts = options_from(ExpandOptions, None, options)
    path, read = input_paths(ckpt)
    out = output_path(output, path, "expand", force, inputs=read)
    report_verification(expand_checkpoint(path, out, **dataclasses.asdict(opts), verify=verify, force=force))
    err.print(f"[green]expanded[/] {path} by {opts.add_chains} chain(s) -> {out}")
    emit_path(out)


@app.command(name="slice")
@with_options(SliceOptions, after=1)
def slice_(
    ckpt: CkptArg = None,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Keep the first K chains: the result computes exactly the K-chain sub-model."""
    from colm_core.checkpoint import open_checkpoint
    from colm_core.surgery import slice_ as slice_checkpoint

    chains = options_from(SliceOptions, None, options).chains
    path, read = input_paths(ckpt)
    out = output_path(output, path, f"slice{chains}", force, inputs=read)
    n = open_checkpoint(path).config.n_chains
    if chains == n:
        err.print(f"--chains {chains} keeps all {n} chains: the output is a plain copy")
    report_verification(slice_checkpoint(path, out, chains=chains, verify=verify, force=force))
    err.print(f"[green]sliced[/] {path} to chains 1..{chains} -> {out}")
    emit_path(out)


@app.command(name="eval")
@with_options(EvalOptions, after=1)
def eval_(
    ckpt: CkptArg = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    **options,
):
    """Loss, perplexity and bits per byte of every k-chain sub-model, or with --tasks their lm-evaluation-harness
    scores (table on stderr, JSON on stdout)."""
    opts = options_from(EvalOptions, None, options)
    if opts.tasks is not None:
        from colm_core.lm_eval_adapter import task_names  # without lm-eval: the error that says what to install

        task_names(opts.tasks)
    from colm_core.checkpoint import load

    path = input_path(ckpt)
    model = load(path, device=torch_device(device), dtype=torch_dtype(dtype))
    n = model.config.n_chains
    ks = sorted(set(opts.chains or range(1, n + 1)))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ColmError(
            f"--chains {','.join(map(str, opts.chains))}: {bad[0]} is outside 1..{n} (this model has {n} chains)"
        )
    if opts.tasks is not None:
        evaluate_on_tasks(model, path, ks, opts)
        return
    from colm_cli.render import eval_table
    from colm_core.data import default_validation_tokens, read_texts
    from colm_core.evaluate import evaluate_tokens, token_stream

    if opts.data:
        ids = token_stream(model.tokenizer, read_texts(opts.data))
    else:
        err.print(
            "no --data: evaluating the held-out part of the embedded corpus (the validation split that "
            "`colm train` without --data never trains on)",
            soft_wrap=True,
        )
        ids = default_validation_tokens(model.tokenizer)
    report = evaluate_tokens(
        model, ids, ks, seq_len=opts.seq_len or EVAL_SEQ_LEN, batch_size=opts.batch_size, max_tokens=opts.max_tokens
    )
    report["checkpoint"] = str(path)
    err.print(eval_table(report))
    emit_json(report)


def evaluate_on_tasks(model, path: Path, chains: list[int], opts: EvalOptions) -> None:
    """`colm eval --tasks`: lm-eval's results per chain count as JSON; whatever lm-eval prints goes to stderr."""
    from contextlib import redirect_stdout

    from colm_cli.render import tasks_table
    from colm_core.lm_eval_adapter import evaluate_tasks

    with redirect_stdout(sys.stderr):
        report = evaluate_tasks(
            model,
            opts.tasks,
            chains,
            num_fewshot=opts.num_fewshot,
            limit=opts.limit,
            include_path=opts.include_path,
            batch_size=opts.batch_size,
        )
    report = {"checkpoint": str(path), **report}
    err.print(tasks_table(report))
    emit_json(report)


@app.command()
@with_options(GenerateOptions, after=4)
def generate(
    ckpt: CkptArg = None,
    prompt: Annotated[str | None, typer.Option(help="Text to continue.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from this file.")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help='Generate for many prompts in one batch: a JSON-lines file, one {"prompt": TEXT} per line; '
            "prints one JSON line per prompt, in order."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    **options,
):
    """Continue a prompt: text streams to stdout as it comes, timings go to stderr."""
    from colm_core.checkpoint import load
    from colm_core.generation import check_prompt, generate_batch

    opts = options_from(GenerateOptions, None, options)  # before the model loads: a bad flag fails at once

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

    results = generate_batch(model, prompt_ids, opts, on_text=None if json_out or prompts else stream)
    for seg in results[0]["schedule"]:
        if seg["recomputed"]:
            err.print(
                f"switching up to {seg['chains']} chains at token {seg['start']}: recomputed the keys/values "
                "of the whole sequence (only CoLM-Air switches without recomputing)",
                soft_wrap=True,
            )
    t = results[0]["timings"]  # the whole batch's
    decode = f"{t['decode_tokens_per_s']:.1f}" if t["decode_tokens_per_s"] is not None else "-"
    tokens = sum(len(r["token_ids"]) for r in results)
    what = f"{len(results)} prompts, {tokens} tokens" if prompts else f"{tokens} tokens ({results[0]['stop_reason']})"
    err.print(
        f"{what}; time to first token "
        f"{t['time_to_first_token_s'] * 1000:.0f} ms, prefill {t['prefill_tokens_per_s']:.0f} tokens/s "
        f"at {results[0]['prefill_chains']} chain(s), decode {decode} tokens/s",
        highlight=False,
        soft_wrap=True,
    )
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
        raise ColmError(
            f"{flag} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None


def utf8_text(text: str, where: str) -> str:
    """Text that UTF-8 can encode: not bytes the command line could not decode, nor a lone surrogate
    (a JSON "\\ud800"), which no tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ColmError(
            f"{where}: not UTF-8 text ({text[e.start]!r} at character {e.start}: a byte the command "
            "line could not decode, or a lone surrogate); give UTF-8 text"
        ) from None
    return text


@app.command()
@with_options(ServeOptions, after=1)
def serve(
    ckpt: CkptArg = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    **options,
):
    """Serve every k-chain sub-model of a checkpoint over an OpenAI-compatible HTTP API, batching concurrent
    requests, until Ctrl-C or SIGTERM (exit 130). Prints the base URL on stdout."""
    from colm_cli.serve import bind, run, url_of  # without the extra: the error that says what to install
    from colm_core.checkpoint import load
    from colm_core.serving import ServeLimits, Service, chat_template

    opts = options_from(ServeOptions, None, options)
    path = input_path(ckpt)
    sock = bind(opts.host, opts.port)
    model = load(path, device=torch_device(device), dtype=torch_dtype(dtype))
    name, api_key, elastic = opts.name or Path(path).resolve().name, opts.api_key or None, opts.elastic
    service = Service(
        model,
        name,
        ServeLimits.of(opts, model.config.max_seq_len),
        chat_template(path),
        path,
        api_key,
        opts.max_wait_ms / 1000 if elastic else None,
    )
    err.print(
        f"[green]serving[/] {name} ({model.config.n_chains} chains: {name}@1..{name}@{model.config.n_chains}"
        f"{f', {name}@auto' if elastic else ''}) on {url_of(sock)}"
        f"{'' if api_key else ' without an API key'}; Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    if not api_key and opts.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[yellow]warning[/]: --host {opts.host} is reachable from the network and no API key is set; set "
            "COLM_API_KEY to require one",
            highlight=False,
            soft_wrap=True,
        )
    print(url_of(sock), flush=True)
    run(service, sock)


@app.command()
@with_options(InspectOptions, after=1)
def inspect(ckpt: CkptArg = None, **options):
    """Show a checkpoint's chains, parameters, shapes, config and history (a Hugging Face directory is read
    in place, not imported)."""
    from colm_cli.render import render
    from colm_core.inspect import describe

    opts = options_from(InspectOptions, None, options)
    report = describe(input_path(ckpt, import_hf=False), verify=opts.verify)
    render(report, err)
    if opts.json:
        emit_json(report)


@app.command(name="import")
def import_(
    hf_dir: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            show_default=False,
            help="A Hugging Face LlamaForCausalLM directory (config.json, safetensors), a `colm export --format hf` "
            "directory, an hf://ORG/NAME reference (@REVISION optional), or a Llama GGUF file (FILE.gguf; "
            "quantized weights are dequantized to float32).",
        ),
    ],
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
@with_options(ExportOptions, after=1)
def export(
    ckpt: CkptArg = None,
    dtype: DtypeOpt = None,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
    **options,
):
    """Write a directory that Hugging Face transformers loads (no quantization)."""
    from colm_core.export import export as export_checkpoint

    fmt = options_from(ExportOptions, None, options).format
    path, read = input_paths(ckpt)
    out = output_path(output, path, fmt, force, inputs=read)
    report_verification(export_checkpoint(path, out, fmt=fmt, dtype=torch_dtype(dtype), verify=verify, force=force))
    err.print(f"[green]exported[/] {path} as {fmt} -> {out}")
    emit_path(out)


@app.command()
@with_options(PullOptions, after=1)
def pull(
    repo_id: Annotated[
        str, typer.Argument(metavar="REPO_ID", help="Hub model repo: ORG/NAME or hf://ORG/NAME[@REVISION].")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also copy the files into this directory (default: print the Hub-cache path)."
        ),
    ] = None,
    force: ForceOpt = False,
    **options,
):
    """Download a colm checkpoint or a Llama transformers repo into the Hugging Face cache; print its path.

    Resumable, shared with other Hub tools, and offline with HF_HUB_OFFLINE=1 once cached."""
    from colm_core.hub import pull as pull_repo

    path = pull_repo(repo_id, options_from(PullOptions, None, options).revision, output, force)
    err.print(f"[green]pulled[/] {repo_id} -> {path}", soft_wrap=True)
    emit_path(path)


@app.command()
@with_options(PushOptions, after=2)
def push(
    ckpt: Annotated[
        str | None,
        typer.Argument(
            metavar="CKPT",
            show_default=False,
            help="Checkpoint directory; when only REPO_ID is given, it is read from stdin.",
        ),
    ] = None,
    repo_id: Annotated[
        str | None, typer.Argument(metavar="REPO_ID", show_default=False, help="Hub model repo: ORG/NAME.")
    ] = None,
    **options,
):
    """Upload a checkpoint with a fresh model card; print hf://ORG/NAME@COMMIT.

    The token comes from HF_TOKEN or `hf auth login`, never from a flag."""
    from colm_core.hub import parse_reference
    from colm_core.hub import push as push_checkpoint

    if repo_id is None:
        ckpt, repo_id = None, ckpt
    if repo_id is None:
        raise ColmError("no REPO_ID: `colm push CKPT ORG/NAME`, or `... | colm push ORG/NAME`")
    opts = options_from(PushOptions, None, options)
    parse_reference(repo_id, opts.revision)  # a bad id is refused before an hf:// input is downloaded
    uri = push_checkpoint(input_path(ckpt), repo_id, **dataclasses.asdict(opts))
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
        report(f"colm: error: {e.in_flags() if isinstance(e, OptionError) else e}")
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
