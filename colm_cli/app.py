"""The `colm` command line: one small function per command, each parsing flags, calling colm_core
and printing. torch is imported inside the commands so that `colm --help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException

from colm_cli.common import emit_json, emit_path, err, input_path, int_list, output_path
from colm_core.errors import ColmError

app = typer.Typer(
    name="colm",
    help="Model surgery for Chain-of-Model language models: grow, slice, tune and ship CoLMs.\n\n"
         "Every command reads a checkpoint (argument, or first line of stdin) and writes a checkpoint "
         "(path on stdout) or JSON, so commands compose in pipes: colm init | colm eval --data x.txt",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CkptArg = Annotated[Optional[str], typer.Argument(
    help="Checkpoint directory; read from the first line of stdin when omitted.", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Output checkpoint directory (default: a new name derived from the input).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output checkpoint.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
DtypeOpt = Annotated[Optional[str], typer.Option(help="float32, bfloat16 or float16 (default: as stored).")]


def torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ColmError(f"--dtype {name}: choose one of float32, bfloat16, float16")
    return dtypes[name]


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
    from colm_core.init import InitOptions, init_model

    opts = InitOptions(
        preset=preset, heads=int_list(chains, "--chains"), kv_heads=int_list(kv_heads, "--kv-heads"),
        ffn=int_list(ffn, "--ffn"), n_layers=layers, head_dim=head_dim, vocab_size=vocab_size, air=air,
        rope_theta=rope_theta, rope_scaling=rope_scaling and int_list_float(rope_scaling), norm_eps=norm_eps,
        tie_embeddings=tie_embeddings, max_seq_len=max_seq_len, tokenizer=tokenizer,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed, init_std=init_std)
    out = output_path(output, Path.cwd() / "colm", preset, force)
    model = init_model(opts)
    from colm_core.checkpoint import history_entry, save

    model.to(torch_dtype(dtype))
    save(model, out, force=force, history=[history_entry("init", opts.as_record())])
    err.print(f"[green]created[/] {out}: {model.config.n_chains} chains, {model.num_parameters():,} parameters")
    emit_path(out)


def int_list_float(value: str) -> list[float]:
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise ColmError(f"--rope-scaling {value!r}: expected FACTOR,LOW,HIGH,ORIGINAL_MAX, e.g. 32,1,4,8192")
    return parts


@app.command()
def inspect(ckpt: CkptArg = None,
            json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False):
    """Show a checkpoint's chains, parameters, shapes, config and history."""
    from colm_cli.render import render
    from colm_core.inspect import describe

    report = describe(input_path(ckpt))
    render(report, err)
    if json_out:
        emit_json(report)


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
    ks = int_list(chains, "--chains") or list(range(1, n + 1))
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


VerifyOpt = Annotated[bool, typer.Option(
    "--verify/--no-verify", help="Check the result on a probe batch (loads the models; skip for minimum memory).")]


def report_verification(report: dict) -> None:
    if "max_abs_diff" in report:
        err.print(f"[green]verified[/] {report['check']}: max abs logit difference {report['max_abs_diff']:.3g} "
                  f"on a {report['probe'][0]}x{report['probe'][1]} probe batch")
    elif report:
        err.print(f"[yellow]not verified[/]: {report['check']}")


@app.command(name="import")
def import_(
    hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face LlamaForCausalLM directory (config.json, safetensors).")],
    verify: VerifyOpt = True,
    output: OutputOpt = None,
    force: ForceOpt = False,
):
    """Convert a Hugging Face Llama checkpoint directory into a 1-chain CoLM."""
    from colm_core.llama import import_llama

    out = output_path(output, hf_dir.resolve(), "colm", force, inputs=[hf_dir])
    report_verification(import_llama(hf_dir, out, verify=verify, force=force))
    err.print(f"[green]imported[/] {hf_dir} -> {out}")
    emit_path(out)


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
    from colm_core.resolve import output_base
    from colm_core.surgery import expand as expand_checkpoint

    path = input_path(ckpt)
    out = output_path(output, output_base(path), "expand", force, inputs=[path])
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
    from colm_core.resolve import output_base
    from colm_core.surgery import slice_ as slice_checkpoint

    path = input_path(ckpt)
    out = output_path(output, output_base(path), f"slice{chains}", force, inputs=[path])
    n = open_checkpoint(path).config.n_chains
    if chains == n:
        err.print(f"--chains {chains} keeps all {n} chains: the output is a plain copy")
    report_verification(slice_checkpoint(path, out, chains=chains, verify=verify, force=force))
    err.print(f"[green]sliced[/] {path} to chains 1..{chains} -> {out}")
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
    from colm_core.resolve import output_base

    path = input_path(ckpt)
    out = output_path(output, output_base(path), fmt, force, inputs=[path])
    report_verification(export_checkpoint(path, out, fmt=fmt, dtype=torch_dtype(dtype), verify=verify,
                                          force=force))
    err.print(f"[green]exported[/] {path} as {fmt} -> {out}")
    emit_path(out)


def main() -> None:
    """Entry point: run the app, turning every expected failure into one line on stderr and an exit code."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app(prog_name="colm", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("colm: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("colm: interrupted")
        sys.exit(130)
    except TyperException as e:  # click's usage errors, raised by typer's bundled click
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        if e.format_message():  # empty after `colm` alone, which has printed the help already
            err.print(f"colm: error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(e, "exit_code", 2))
    except ColmError as e:
        if debug:
            raise
        err.print(f"colm: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Exception as e:  # an unexpected failure is still one line unless --debug asks for more
        if debug:
            raise
        err.print(f"colm: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
