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

from colm_cli.common import emit_json, emit_path, err, input_path, number_list, output_path
from colm_core.errors import WORKER_ERRORS_ENV, ColmError, Interrupted

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


def torch_device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


@app.command()
def init(
    preset: Annotated[str, typer.Option(help="Starting shape: tiny (trains in minutes on 2 CPU cores), "
                                             "small, or llama-1b (Llama-3.2-1B's shape in 4 chains).")] = "tiny",
    chains: Annotated[Optional[str], typer.Option(help="Query heads per chain, e.g. 4,4,4,4.")] = None,
    kv_heads: Annotated[Optional[str], typer.Option(help="KV heads per chain (one number for all).")] = None,
    ffn: Annotated[Optional[str], typer.Option(help="FFN units per chain (one number for all).")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Number of layers.")] = None,
    head_dim: Annotated[Optional[int], typer.Option(help="Width of every attention head.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size (default: the tokenizer's).")] = None,
    air: Annotated[bool, typer.Option("--air", help="CoLM-Air: keys/values from chain 1, shared by all.")] = False,
    rope_theta: Annotated[Optional[float], typer.Option(help="RoPE base.")] = None,
    rope_scaling: Annotated[Optional[str], typer.Option(
        help="Llama-3 RoPE scaling as FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,ORIGINAL_MAX_POSITIONS.")] = None,
    norm_eps: Annotated[Optional[float], typer.Option(help="RMSNorm epsilon.")] = None,
    tie_embeddings: Annotated[Optional[bool], typer.Option(
        "--tie-embeddings/--no-tie-embeddings", help="Share embedding and LM-head blocks.")] = None,
    max_seq_len: Annotated[Optional[int], typer.Option(help="Longest sequence the model accepts.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        help="A Hugging Face tokenizer.json to store in the model (default: built-in bytes).")] = None,
    bos_token_id: Annotated[Optional[int], typer.Option(help="Beginning-of-sequence token id.")] = None,
    eos_token_id: Annotated[Optional[int], typer.Option(help="End-of-sequence token id.")] = None,
    pad_token_id: Annotated[Optional[int], typer.Option(help="Padding token id.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
    init_std: Annotated[float, typer.Option(help="Standard deviation of the initial weights.")] = 0.02,
    dtype: Annotated[str, typer.Option(help="Stored dtype: float32, bfloat16 or float16.")] = "float32",
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Create a new, randomly initialised CoLM checkpoint."""
    from colm_core.checkpoint import history_entry, save
    from colm_core.init import InitOptions, init_model

    opts = InitOptions(
        preset=preset, heads=number_list(chains, "--chains"), kv_heads=number_list(kv_heads, "--kv-heads"),
        ffn=number_list(ffn, "--ffn"), n_layers=layers, head_dim=head_dim, vocab_size=vocab_size, air=air,
        rope_theta=rope_theta, rope_scaling=number_list(rope_scaling, "--rope-scaling", float, "32,1,4,8192"),
        norm_eps=norm_eps,
        tie_embeddings=tie_embeddings, max_seq_len=max_seq_len, tokenizer=tokenizer,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed, init_std=init_std)
    out = output_path(output, Path.cwd() / "colm", preset, force)
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
def train(
    ckpt: CkptArg = None,
    data: Annotated[Optional[list[str]], typer.Option(
        help="Text file, directory or glob (repeat for more); default: the embedded corpus.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps. (default: 200)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Sequences per optimizer step, over all processes. (default: 8)")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-steps per optimizer step. (default: 1)")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per training sequence. (default: 256)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate. (default: 2e-3)")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="Final lr as a fraction of --lr. (default: 0.1)")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps. (default: 20)")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="cosine, linear or constant. (default: cosine)")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay of matrices. (default: 0.1)")] = None,
    beta1: Annotated[Optional[float], typer.Option(help="AdamW beta1. (default: 0.9)")] = None,
    beta2: Annotated[Optional[float], typer.Option(help="AdamW beta2. (default: 0.95)")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Gradient norm clip, 0 for none. (default: 1.0)")] = None,
    chain_loss: Annotated[Optional[str], typer.Option(
        help="all: train every scale in one forward; full: the last scale only. (default: all)")] = None,
    chain_weights: Annotated[Optional[str], typer.Option(help="Loss weight per trained scale, e.g. 1,1,1,2.")] = None,
    freeze_chains: Annotated[Optional[int], typer.Option(
        help="Freeze chains 1..K and train only the later ones (chain tuning). (default: 0)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the batch sampling. (default: 0)")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="auto (float32 on CPU, bfloat16 autocast on GPU), float32, bfloat16, float16. (default: auto)")] = None,
    device: DeviceOpt = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Steps between logged losses. (default: 10)")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        help="Steps between validation runs, 0 for the end only. (default: 50)")] = None,
    eval_windows: Annotated[Optional[int], typer.Option(help="Held-out windows per validation. (default: 16)")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of the tokens held out. (default: 0.05)")] = None,
    save_every: Annotated[Optional[int], typer.Option(
        help="Steps between step checkpoints, 0 for none (SIGINT/SIGTERM always save). (default: 0)")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Step checkpoints kept. (default: 2)")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="ddp or fsdp, under torchrun. (default: ddp)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON or TOML file with any of these options.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        help="auto (newest complete step checkpoint of this output's run) or a step/run directory.")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Launch this many processes with torchrun.")] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Train a checkpoint into a new one (progress on stderr, the new checkpoint's path on stdout)."""
    if nproc is not None and "LOCAL_RANK" not in os.environ:  # not yet under torchrun
        from colm_core.parallel import launch

        stdin_input = [] if ckpt else [str(input_path(None))]  # the workers do not share our stdin
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:]) + stdin_input))
    from colm_core.train import TrainOptions, train as run_training
    from colm_cli.render import TrainProgress

    weights = number_list(chain_weights, "--chain-weights", float, "1,1,2")
    flags = dict(data=data, steps=steps, batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len, lr=lr,
                 min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps, schedule=schedule, weight_decay=weight_decay,
                 beta1=beta1, beta2=beta2, grad_clip=grad_clip, chain_loss=chain_loss, chain_weights=weights,
                 freeze_chains=freeze_chains, seed=seed, dtype=dtype, device=device, compile=compile,
                 log_every=log_every, eval_every=eval_every, eval_windows=eval_windows, val_fraction=val_fraction,
                 save_every=save_every, keep_checkpoints=keep_checkpoints, strategy=strategy)
    opts = TrainOptions.from_sources(config, flags)
    path = input_path(ckpt)
    out = output_path(output, path, "train", force, inputs=[path])
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
    add_chains: Annotated[int, typer.Option(help="Number of chains to append.")] = 1,
    heads: Annotated[Optional[int], typer.Option(help="Query heads of each new chain (default: the last chain's).")] = None,
    kv_heads: Annotated[Optional[int], typer.Option(help="KV heads of each new chain (default: the last chain's; "
                                                         "CoLM-Air: none, chain 1's are shared).")] = None,
    ffn: Annotated[Optional[int], typer.Option(help="FFN units of each new chain (default: the last chain's).")] = None,
    air: Annotated[bool, typer.Option("--air", help="Make a 1-chain model CoLM-Air: new chains read chain 1's "
                                                    "keys and values.")] = False,
    init_std: Annotated[float, typer.Option(help="Standard deviation of the new chains' random blocks.")] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of the new chains' random blocks.")] = 0,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Append chains; new LM-head blocks are zero, so the logits stay exactly the input's."""
    from colm_core.surgery import expand as expand_checkpoint

    path = input_path(ckpt)
    out = output_path(output, path, "expand", force, inputs=[path])
    report_verification(expand_checkpoint(path, out, add_chains=add_chains, heads=heads, kv_heads=kv_heads, ffn=ffn,
                                          air=air, init_std=init_std, seed=seed, verify=verify, force=force))
    err.print(f"[green]expanded[/] {path} by {add_chains} chain(s) -> {out}")
    emit_path(out)


@app.command(name="slice")
def slice_(
    ckpt: CkptArg = None,
    chains: Annotated[int, typer.Option(help="Keep chains 1..K: the K-chain sub-model.")] = ...,
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Keep the first K chains: the result computes exactly the K-chain sub-model."""
    from colm_core.checkpoint import open_checkpoint
    from colm_core.surgery import slice_ as slice_checkpoint

    path = input_path(ckpt)
    out = output_path(output, path, f"slice{chains}", force, inputs=[path])
    n = open_checkpoint(path).config.n_chains
    if chains == n:
        err.print(f"--chains {chains} keeps all {n} chains: the output is a plain copy")
    report_verification(slice_checkpoint(path, out, chains=chains, verify=verify, force=force))
    err.print(f"[green]sliced[/] {path} to chains 1..{chains} -> {out}")
    emit_path(out)


@app.command(name="eval")
def eval_(
    ckpt: CkptArg = None,
    data: Annotated[Optional[list[str]], typer.Option(
        help="Text file, directory or glob (repeat for more); default: the embedded corpus.")] = None,
    chains: Annotated[Optional[str], typer.Option(help="Chain counts to evaluate, e.g. 1,2,4 (default: all).")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per evaluation window.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    max_tokens: Annotated[Optional[int], typer.Option(help="Evaluate at most this many tokens.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Loss, perplexity and bits per byte of every k-chain sub-model (table on stderr, JSON on stdout)."""
    from colm_core.checkpoint import load
    from colm_core.data import default_corpus_files, read_texts
    from colm_core.evaluate import evaluate
    from colm_cli.render import eval_table

    path = input_path(ckpt)
    model = load(path, device=torch_device(device), dtype=torch_dtype(dtype))
    n = model.config.n_chains
    ks = number_list(chains, "--chains", example="1,2,4") or list(range(1, n + 1))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ColmError(f"--chains {chains}: {bad[0]} is outside 1..{n} (this model has {n} chains)")
    if seq_len < 1 or batch_size < 1:
        raise ColmError("--seq-len and --batch-size must be positive")
    texts = read_texts(data or default_corpus_files())
    report = evaluate(model, texts, sorted(set(ks)), seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
    report["checkpoint"] = str(path)
    err.print(eval_table(report))
    emit_json(report)


@app.command()
def generate(
    ckpt: CkptArg = None,
    prompt: Annotated[Optional[str], typer.Option(help="Text to continue.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="Read the prompt from this file.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help='Generate for many prompts in one batch: a JSON-lines file, one {"prompt": TEXT} per line; '
             "prints one JSON line per prompt, in order.")] = None,
    chains: Annotated[Optional[int], typer.Option(help="Chains of the sub-model that generates (default: all).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generate at most this many tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Sample among the most likely tokens of mass p.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when the text contains this (repeatable).")] = None,
    switch: Annotated[Optional[str], typer.Option(
        help="Change the chain count at generated positions, e.g. 0:4,32:1,64:2.")] = None,
    prefill_chains: Annotated[Optional[int], typer.Option(
        help="Chains that build the prompt's KV cache (default: 1 for CoLM-Air, else --chains).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Continue a prompt: text streams to stdout as it comes, timings go to stderr."""
    from colm_core.checkpoint import load
    from colm_core.generation import generate_batch, parse_switch

    if sum(source is not None for source in (prompt, prompt_file, prompts)) != 1:
        raise ColmError("give the prompt with exactly one of --prompt TEXT, --prompt-file FILE or --prompts FILE")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise ColmError(f"--prompt-file {prompt_file}: no such file")
        prompt = prompt_file.read_text()
    texts = read_prompts(prompts) if prompts is not None else [prompt]
    if not texts[0]:
        raise ColmError("the prompt is empty; give some text to continue")
    model = load(input_path(ckpt), device=torch_device(device), dtype=torch_dtype(dtype))

    def stream(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    results = generate_batch(model, texts, max_new_tokens=max_new_tokens, chains=chains,
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
        emit_json({"prompt": prompt, **results[0]})
    else:
        stream(0, "\n")


def read_prompts(path: Path) -> list[str]:
    """The prompts of a JSON-lines file, one {"prompt": TEXT} object per line (blank lines skipped)."""
    if not path.is_file():
        raise ColmError(f"--prompts {path}: no such file")
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["prompt"]
        except (ValueError, TypeError, KeyError):
            text = None
        if not isinstance(text, str):
            raise ColmError(f'--prompts {path} line {number}: expected a JSON object like {{"prompt": "Once upon"}}')
        if not text:
            raise ColmError(f"--prompts {path} line {number}: the prompt is empty; give some text to continue")
        texts.append(text)
    if not texts:
        raise ColmError(f'--prompts {path}: no prompts; write one {{"prompt": TEXT}} object per line')
    return texts


@app.command()
def inspect(ckpt: CkptArg = None,
            json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
            verify: Annotated[bool, typer.Option(
                "--verify", help="Re-hash the files and compare them with the sha256 digests recorded when the "
                                 "checkpoint was written; exit 1 naming the first that differs.")] = False):
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
        metavar="HF_DIR", show_default=False,
        help="A Hugging Face LlamaForCausalLM directory (config.json, safetensors), a `colm export --format hf` "
             "directory, or an hf://ORG/NAME reference (@REVISION optional).")],
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Convert a Hugging Face Llama directory into a 1-chain CoLM, or read a `--format hf` export back."""
    from colm_core.llama import import_hf
    from colm_core.resolve import resolve_input

    source = resolve_input(hf_dir)
    out = output_path(output, Path.cwd() / source.resolve().name, "colm", force, inputs=[source])
    report_verification(import_hf(source, out, verify=verify, force=force))
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

    path = input_path(ckpt)
    out = output_path(output, path, fmt, force, inputs=[path])
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


def main() -> None:
    """Entry point: run the app, turning every expected failure into one line on stderr and an exit code."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop_on_signal)
    try:
        code = app(prog_name="colm", standalone_mode=False)  # typer turns KeyboardInterrupt into 130
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
    except ColmError as e:
        if debug:
            raise
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
