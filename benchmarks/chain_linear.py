"""Forward+backward time of the chain linear against a dense layer of the same shape.

    python benchmarks/chain_linear.py [--quick] [--out benchmarks/results/chain_linear.json]

For n equal chains the chain linear does (n+1)/(2n) of the dense FLOPs, so the ideal
speed-up is 2n/(n+1). Compared, per (width, n), all timed side by side in one run with
interleaved repeats (median reported) so that load from other processes hits all alike:

- dense:     nn.Linear-sized dense matmul (F.linear, no bias) - the layer CoLM replaces
- masked:    dense matmul with the block lower-triangular weight (the reference kernel)
- chain_cat: per-chain F.linear + torch.cat, autograd differentiating it
- chain:     the dispatched chain linear (CPU: preallocated buffers, hand-written backward)
- on CUDA also triton (the block-sparse kernels) against cuBLAS (dense).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels.chain_linear import chain_linear, reference  # noqa: E402


def chain_cat(x, weights):
    return torch.cat([F.linear(x[..., : w.shape[1]], w) for w in weights], dim=-1)


def fwd_bwd(fn, x, params, grad_y):
    """One training step's worth of work: forward, then grads for input and weights."""
    y = fn(x, params)
    torch.autograd.grad(y, [x, *params], grad_y)


def time_side_by_side(cases: dict, repeats: int, sync) -> dict:
    """Median seconds per case; repeats are interleaved across cases."""
    for run in cases.values():  # warm-up (allocator, kernel compilation)
        run()
    samples = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def bench(width: int, n: int, tokens: int, repeats: int, device: str) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    chain = width // n
    weights = [
        (torch.randn(chain, chain * (i + 1), generator=gen) / width**0.5).to(device).requires_grad_()
        for i in range(n)
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
        from kernels.chain_linear import triton as triton_impl

        cases["triton"] = lambda: fwd_bwd(triton_impl.chain_linear, x, weights, grad_y)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = time_side_by_side(cases, repeats, sync)
    ideal = 2 * n / (n + 1)
    row = {"device": device, "width": width, "chains": n, "tokens": tokens, "ideal": ideal}
    row["seconds"] = times
    for name in cases:
        if name != "dense":
            row[f"speedup_{name}"] = times["dense"] / times[name]
    row["fraction_of_ideal"] = row["speedup_chain"] / ideal
    return row


def print_table(rows):
    names = [k for k in rows[0] if k.startswith("speedup_")]
    header = ["device", "width", "n", "dense ms"] + [k.removeprefix("speedup_") for k in names] + ["ideal", "chain/ideal"]
    print(" | ".join(f"{h:>10}" for h in header))
    for r in rows:
        cells = [r["device"], r["width"], r["chains"], f"{r['seconds']['dense'] * 1e3:.1f}"]
        cells += [f"{r[k]:.2f}x" for k in names] + [f"{r['ideal']:.2f}x", f"{r['fraction_of_ideal']:.0%}"]
        print(" | ".join(f"{c:>10}" for c in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--widths", type=int, nargs="+", default=None)
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/chain_linear.json")
    args = parser.parse_args()
    widths = args.widths or ([256, 512] if args.quick else [1024, 2048])
    tokens = args.tokens or (256 if args.quick else 2048)
    repeats = args.repeats or (3 if args.quick else 7)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [bench(w, n, tokens, repeats, d) for d in devices for w in widths for n in args.chains]
    print(f"fwd+bwd, {tokens} tokens, {torch.get_num_threads()} CPU threads, median of {repeats}; speed-up = dense time / time")
    print_table(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
