"""Forward+backward time of the chain linear against a dense layer of the same shape.

    python -m benchmarks.chain_linear [--quick] [--threads N] [--out benchmarks/results/chain_linear.json]

For n equal chains the chain linear does (n+1)/(2n) of the dense FLOPs, so the ideal
speed-up is 2n/(n+1). Compared, per (width, n), all timed side by side in one run with
interleaved repeats (median reported) so that load from other processes hits all alike:

- dense:     nn.Linear-sized dense matmul (F.linear, no bias) - the layer CoLM replaces
- masked:    dense matmul with the block lower-triangular weight (the reference kernel)
- chain_cat: per-chain F.linear + torch.cat, autograd differentiating it
- chain:     the dispatched chain linear (default backend torch: preallocated buffers, hand-written backward)
- on CUDA also triton (the block-sparse kernels) against cuBLAS (dense).
"""

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_medians, parser, report, set_threads
from colm_kernels.chain_linear import chain_linear, op, reference


def chain_cat(x, weights):
    return torch.cat([F.linear(x[..., : w.shape[1]], w) for w in weights], dim=-1)


def fwd_bwd(fn, x, params, grad_y):
    """One training step's worth of work: forward, then grads for input and weights."""
    y = fn(x, params)
    torch.autograd.grad(y, [x, *params], grad_y)


def bench(width: int, n: int, tokens: int, repeats: int, device: str) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    chain = width // n
    weights = [
        (torch.randn(chain, chain * (i + 1), generator=gen) / width**0.5).to(device).requires_grad_() for i in range(n)
    ]
    dense = (torch.randn(width, width, generator=gen) / width**0.5).to(device).requires_grad_()
    x = torch.randn(tokens, width, generator=gen).to(device).requires_grad_()
    grad_y = torch.randn(tokens, width, generator=gen).to(device)
    cases = {
        "dense": lambda: fwd_bwd(lambda x, p: F.linear(x, p[0]), x, [dense], grad_y),
        "masked": lambda: fwd_bwd(reference.chain_linear, x, weights, grad_y),
        "chain_cat": lambda: fwd_bwd(chain_cat, x, weights, grad_y),
        "chain": lambda: fwd_bwd(chain_linear, x, weights, grad_y),
    }
    if device == "cuda":
        cases["triton"] = lambda: fwd_bwd(lambda x, p: op.chain_linear(x, p, "triton"), x, weights, grad_y)
    times = interleaved_medians(cases, repeats, sync=torch.cuda.synchronize if device == "cuda" else None)
    ideal = 2 * n / (n + 1)
    row = {"device": device, "width": width, "chains": n, "tokens": tokens, "ideal": ideal}
    row["seconds"] = times
    for name in cases:
        if name != "dense":
            row[f"speedup_{name}"] = times["dense"] / times[name]
    row["fraction_of_ideal"] = row["speedup_chain"] / ideal
    return row


def table_rows(rows: list[dict]) -> tuple[list[str], list[list]]:
    # Union over rows: only the CUDA rows have a triton speed-up.
    names = list(dict.fromkeys(k for r in rows for k in r if k.startswith("speedup_")))
    columns = (
        ["device", "width", "n", "dense ms"] + [k.removeprefix("speedup_") for k in names] + ["ideal", "chain/ideal"]
    )
    cells = [
        [r["device"], r["width"], r["chains"], f"{r['seconds']['dense'] * 1e3:.1f}"]
        + [f"{r[k]:.2f}x" if k in r else "-" for k in names]
        + [f"{r['ideal']:.2f}x", f"{r['fraction_of_ideal']:.0%}"]
        for r in rows
    ]
    return columns, cells


def main():
    p = parser(__doc__, "chain_linear")
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    set_threads(args.threads)
    widths = args.widths or ([256, 512] if args.quick else [1024, 2048])
    tokens = args.tokens or (256 if args.quick else 2048)
    repeats = args.repeats or (3 if args.quick else 7)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [bench(w, n, tokens, repeats, d) for d in devices for w in widths for n in args.chains]
    columns, cells = table_rows(rows)
    report(
        f"fwd+bwd, {tokens} tokens, {torch.get_num_threads()} CPU threads, median of {repeats}; "
        "speed-up = dense time / time",
        columns,
        cells,
        {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
        args.out,
    )


if __name__ == "__main__":
    main()
