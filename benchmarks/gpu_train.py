"""GPU training speed: the chain linear's passes per backend against cuBLAS dense, and a training
step of a Llama-3.2-1B-shaped CoLM (4 chains and 1 chain) against transformers' LlamaForCausalLM.

    python -m benchmarks.gpu_train [--quick] [--device cuda] [--out benchmarks/results/gpu_train.json]

Kernel table (default: widths 2048 and 4096, chains 1/2/4/8, 8192 tokens, bfloat16): forward,
grad-input, grad-weight (each pass alone) and total (forward + backward through autograd) in ms,
the total's TFLOP/s of useful work (the chain's lower-triangular blocks only) and its speed-up
over dense F.linear (cuBLAS) of the same width, per backend (COLM_KERNELS: torch, and triton
on CUDA). For n equal chains the FLOP ideal is 2n/(n+1).

Step table: forward, float32 cross-entropy of the full model, backward (no optimizer), fp32
parameters under bfloat16 autocast as `colm train` runs on CUDA; tokens/s and the ratio to
transformers' Llama of the same shape, timed side by side. --quick shrinks every shape so that
it runs on a CPU in a minute (a smoke test: its numbers mean nothing).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_medians, parser, report, set_threads
from colm_kernels.chain_linear import op

FULL = dict(
    widths=[2048, 4096],
    chains=[1, 2, 4, 8],
    tokens=8192,
    repeats=10,
    step=dict(layers=16, width=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, batch=2, seq=2048),
)
QUICK = dict(
    widths=[128],
    chains=[1, 2, 4],
    tokens=256,
    repeats=3,
    step=dict(layers=2, width=128, heads=8, kv_heads=4, ffn=256, vocab=512, batch=2, seq=64),
)


def with_backend(backend: str, fn):
    def run():
        os.environ["COLM_KERNELS"] = backend
        return fn()

    return run


def kernel_row(width: int, n: int, tokens: int, repeats: int, device: str, dtype: torch.dtype, backends) -> dict:
    gen = torch.Generator().manual_seed(0)
    chain = width // n
    make = lambda *shape: (torch.randn(*shape, generator=gen) / width**0.5).to(device, dtype)  # noqa: E731
    weights = [make(chain, chain * (i + 1)).requires_grad_() for i in range(n)]
    dense = make(width, width).requires_grad_()
    x, dy = make(tokens, width).requires_grad_(), make(tokens, width)
    useful = 2 * tokens * sum(w.numel() for w in weights)  # FLOPs of one pass

    def total(fn, params):
        return lambda: torch.autograd.grad(fn(x, params), [x, *params], dy)

    xd, wd, dd = x.detach(), [w.detach() for w in weights], dense.detach()  # the passes alone: no autograd
    cases = {
        "dense fwd": lambda: F.linear(xd, dd),
        "dense dx": lambda: dy @ dd,
        "dense dw": lambda: dy.t() @ xd,
        "dense total": total(lambda x, p: F.linear(x, p[0]), [dense]),
    }
    for b in backends:
        impl = op.implementation(b)
        cases |= {
            f"{b} fwd": lambda impl=impl: impl.forward(xd, wd),
            f"{b} dx": lambda impl=impl: impl.grad_input(dy, wd, width),
            f"{b} dw": lambda impl=impl: impl.grad_weights(dy, xd, wd, [True] * n),
            f"{b} total": total(lambda x, p, b=b: op.chain_linear(x, p, b), weights),
        }
    sync = torch.cuda.synchronize if device == "cuda" else None
    seconds = interleaved_medians(cases, repeats, warmup=2, sync=sync)
    row = {
        "width": width,
        "chains": n,
        "tokens": tokens,
        "dtype": str(dtype),
        "seconds": seconds,
        "ideal": 2 * n / (n + 1),
        "dense_tflops": 3 * 2 * tokens * width * width / seconds["dense total"] / 1e12,
    }
    for b in backends:
        row[f"{b}_tflops"] = 3 * useful / seconds[f"{b} total"] / 1e12
        row[f"{b}_speedup"] = seconds["dense total"] / seconds[f"{b} total"]
    return row


def chained_config(shape: dict, chains: int):
    """A Llama shape (width, heads, kv_heads, ffn, ...) cut into `chains` equal chains, with a tied head."""
    from colm_core.config import ColmConfig

    def per_chain(total: int) -> list[int]:
        return [total // chains] * chains

    return ColmConfig(
        vocab_size=shape["vocab"],
        n_layers=shape["layers"],
        head_dim=shape["width"] // shape["heads"],
        heads=per_chain(shape["heads"]),
        kv_heads=per_chain(shape["kv_heads"]),
        ffn=per_chain(shape["ffn"]),
        max_seq_len=shape["seq"],
        tie_embeddings=True,
    ).validate()


def colm_loss(shape: dict, chains: int, device: str):
    from colm_core.losses import MultiScaleLoss
    from colm_core.model import CoLM

    model = CoLM(chained_config(shape, chains)).init_weights().to(device).train()
    module = MultiScaleLoss(model, [chains])  # the full model's loss only, as Llama's
    return lambda ids, targets: module(ids, targets).total


def llama_config(shape: dict):
    """transformers' LlamaConfig of the same shape as chained_config's, tied head, SDPA attention."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=shape["width"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        vocab_size=shape["vocab"],
        max_position_embeddings=shape["seq"],
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def llama_loss(shape: dict, device: str):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(shape)).to(device).train()

    def loss(ids, targets):
        logits = model(ids).logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")

    return loss


def step_rows(shape: dict, repeats: int, device: str, dtype: torch.dtype, backends) -> list[dict]:
    ids = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), device=device)

    def step(loss):
        def run():
            with torch.autocast(device, dtype=dtype):
                total = loss(ids[:, :-1], ids[:, 1:]).sum()
            total.backward()

        return run

    cases = {"llama": step(llama_loss(shape, device))}
    for chains in (4, 1):
        module = colm_loss(shape, chains, device)
        for b in backends:
            cases[f"colm {chains} chain{'s' if chains > 1 else ''} ({b})"] = with_backend(b, step(module))
    sync = torch.cuda.synchronize if device == "cuda" else None
    seconds = interleaved_medians(cases, repeats, warmup=2, sync=sync)
    tokens = shape["batch"] * shape["seq"]
    return [
        {"model": name, "tokens_per_second": tokens / s, "vs_llama": seconds["llama"] / s, "seconds": s}
        for name, s in seconds.items()
    ]


def main():
    p = parser(__doc__, "gpu_train")
    p.add_argument("--quick", action="store_true", help="tiny shapes (runs on CPU; a smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--skip-step", action="store_true", help="the kernel table only")
    args = p.parse_args()
    set_threads(args.threads)
    setup, dtype, device = QUICK if args.quick else FULL, getattr(torch, args.dtype), args.device
    # Triton needs CUDA (on a CPU only the interpreter, far too slow to time).
    backends = ["torch", "triton"] if device == "cuda" else ["torch"]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    payload = {"device": name, "torch": torch.__version__, "dtype": args.dtype, "quick": args.quick}

    kernels = [
        kernel_row(w, n, setup["tokens"], setup["repeats"], device, dtype, backends)
        for w in setup["widths"]
        for n in setup["chains"]
    ]
    payload["kernels"] = kernels
    columns = (
        ["width", "n", "dense ms", "dense TFLOP/s"]
        + [f"{b} {c}" for b in backends for c in ("fwd ms", "dx ms", "dw ms", "total ms", "TFLOP/s", "vs dense")]
        + ["ideal"]
    )
    cells = [
        [r["width"], r["chains"], f"{r['seconds']['dense total'] * 1e3:.2f}", f"{r['dense_tflops']:.0f}"]
        + [
            v
            for b in backends
            for v in (
                *(f"{r['seconds'][f'{b} {c}'] * 1e3:.2f}" for c in ("fwd", "dx", "dw", "total")),
                f"{r[f'{b}_tflops']:.0f}",
                f"{r[f'{b}_speedup']:.2f}x",
            )
        ]
        + [f"{r['ideal']:.2f}x"]
        for r in kernels
    ]
    report(
        f"chain linear on {name}, {setup['tokens']} tokens, {args.dtype}, median of {setup['repeats']}",
        columns,
        cells,
        payload,
        args.out,
    )

    if not args.skip_step:
        shape = setup["step"]
        payload["step"] = {"shape": shape, "rows": step_rows(shape, setup["repeats"], device, dtype, backends)}
        report(
            f"training step on {name}: {shape}, {args.dtype} autocast, median of {setup['repeats']}",
            ["model", "tokens/s", "vs llama"],
            [[r["model"], f"{r['tokens_per_second']:.0f}", f"{r['vs_llama']:.2f}x"] for r in payload["step"]["rows"]],
            payload,
            args.out,
        )


if __name__ == "__main__":
    main()
