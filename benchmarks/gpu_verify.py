"""One GPU verification run: the tables of the GPU plan (kernels, overhead, loss, step), every
baseline rerun in this process, one JSON file. About 8 minutes on one H100/H200; `--quick` runs
tiny shapes on a CPU in seconds (a smoke test: its numbers mean nothing).

    python -m benchmarks.gpu_verify [--quick] [--tables T1,T3] [--out benchmarks/results/gpu_verify.json]

T1 kernels   the chain linear per backend (dense F.linear, masked, torch, triton) at widths 2048 and
             4096, 1 and 4 chains, 8192 tokens, bf16: each pass alone, their sum, the eager
             autograd total, the total's ratio to dense, and the forward's error vs float32
T2 overhead  host microseconds per fwd+bwd of a tiny chain linear: F.linear, the custom op, the
             autograd.Function, and the entry point under autocast
T3 loss      4096 tokens x vocabulary 128256 x width 2048, 4 chains, float32 head, bf16 autocast:
             materialised float32 logits (transformers' way), the checkpointed loss colm had,
             the fused loss; the last scale and every scale: ms, peak GiB, loss and head-gradient
             differences from the materialised one
T4 step      the Llama-3.2-1B shape, 2 x 2048 tokens, bf16 autocast, AdamW: transformers' Llama,
             colm with 1 and 4 chains, the fused loss and the masked backend each on and off:
             ms, tokens/s, ratio to transformers, peak GiB, host ms per step

Kernel and loss timings use triton.testing.do_bench on CUDA (median, L2 flushed); steps are
3 warm-up + 10 interleaved, median. A table is a function in TABLES: adding one (T5 decode) is
adding a function and its name. Peak memory is torch.cuda.max_memory_allocated on CUDA; on a
CPU (--quick) it is the growth of peak RSS, which only shows what goes past earlier peaks.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved, parser, report, set_threads
from benchmarks.gpu_train import chained_config, llama_config

FULL = dict(
    t1=dict(widths=[2048, 4096], chains=[1, 4], tokens=8192),
    t2=dict(width=64, chains=2, tokens=16, calls=200),
    t3=dict(tokens=4096, vocab=128256, width=2048, chains=4),
    t4=dict(layers=16, width=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, batch=2, seq=2048, repeats=10),
)
QUICK = dict(
    t1=dict(widths=[64], chains=[1, 4], tokens=128),
    t2=dict(width=64, chains=2, tokens=16, calls=5),
    t3=dict(tokens=64, vocab=512, width=64, chains=4),
    t4=dict(layers=1, width=64, heads=4, kv_heads=4, ffn=128, vocab=256, batch=2, seq=32, repeats=2),
)


class Run:
    """Device, dtype and the timers every table shares."""

    def __init__(self, device: str, quick: bool):
        self.device, self.quick = device, quick
        self.cuda = device == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)

    def ms(self, fn) -> float:
        """Median milliseconds of fn (do_bench on CUDA: L2 flushed between calls)."""
        if self.cuda:
            from triton.testing import do_bench

            return do_bench(fn, return_mode="median")
        fn()
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    def peak_gib(self, fn) -> float:
        """Memory fn allocates at its peak beyond what was allocated before it."""
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            self.sync()
            return (torch.cuda.max_memory_allocated() - before) / 2**30
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20

    def autocast(self):
        return torch.autocast(self.device, dtype=self.dtype, enabled=self.cuda)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-30)).item()


def kernels(run: Run, setup: dict) -> tuple[str, list[dict]]:
    from colm_kernels.chain_linear import op, reference

    backends = ["masked", "torch"] + (["triton"] if run.cuda else [])  # Triton on a CPU: the interpreter only
    rows = []
    for width in setup["widths"]:
        for n in setup["chains"]:
            gen = torch.Generator().manual_seed(0)
            make = lambda *shape: torch.randn(*shape, generator=gen) / width**0.5  # noqa: E731
            chain = width // n
            weights32 = [make(chain, chain * (i + 1)) for i in range(n)]
            x32, dy32 = make(setup["tokens"], width), make(setup["tokens"], width)
            exact = reference.chain_linear(
                x32.to(run.device, torch.float64), [w.to(run.device, torch.float64) for w in weights32]
            )
            x, dy = x32.to(run.device, run.dtype), dy32.to(run.device, run.dtype)
            weights = [w.to(run.device, run.dtype) for w in weights32]
            dense = reference.dense_chain_weight(weights).contiguous()

            def eager_total(fn, params):
                """forward + backward through autograd, on leaves of their own (the passes take plain tensors)"""
                leaf, params = x.detach().requires_grad_(), [p.detach().clone().requires_grad_() for p in params]
                return lambda: torch.autograd.grad(fn(leaf, params), [leaf, *params], dy)

            passes = {
                "dense": (
                    lambda: F.linear(x, dense),
                    lambda: dy @ dense,
                    lambda: dy.t() @ x,
                    eager_total(lambda x, p: F.linear(x, p[0]), [dense]),
                    F.linear(x, dense),
                )
            }
            for b in backends:
                impl = op.implementation(b)
                passes[b] = (
                    lambda impl=impl: impl.forward(x, weights),
                    lambda impl=impl: impl.grad_input(dy, weights, width),
                    lambda impl=impl: impl.grad_weights(dy, x, weights, [True] * n),
                    eager_total(lambda x, p, b=b: op.ChainLinear.apply(x, b, *p), weights),
                    impl.forward(x, weights),
                )
            for name, (fwd, dx, dw, total, y) in passes.items():
                times = [run.ms(f) for f in (fwd, dx, dw, total)]
                rows.append(
                    {
                        "width": width,
                        "chains": n,
                        "backend": name,
                        "fwd_ms": times[0],
                        "dx_ms": times[1],
                        "dw_ms": times[2],
                        "passes_ms": sum(times[:3]),
                        "autograd_ms": times[3],
                        "max_rel_err_vs_fp64": relative_error(y.double(), exact),
                    }
                )
            dense_total = next(r["autograd_ms"] for r in rows[-len(passes) :] if r["backend"] == "dense")
            for r in rows[-len(passes) :]:
                r["vs_dense"] = dense_total / r["autograd_ms"]
                r["ideal"] = 2 * n / (n + 1)
    return f"T1 chain linear, {setup['tokens']} tokens, {run.dtype}", rows


def overhead(run: Run, setup: dict) -> tuple[str, list[dict]]:
    from colm_kernels.chain_linear import chain_linear, op

    n, width = setup["chains"], setup["width"]
    chain = width // n
    x = torch.randn(setup["tokens"], width, device=run.device, requires_grad=True)
    weights = [torch.randn(chain, chain * (i + 1), device=run.device, requires_grad=True) for i in range(n)]
    dense = torch.randn(width, width, device=run.device, requires_grad=True)
    dy = torch.randn(setup["tokens"], width, device=run.device)

    def under_autocast():
        with torch.autocast(run.device, dtype=torch.bfloat16):
            return chain_linear(x, weights)

    cases = {
        "F.linear": lambda: F.linear(x, dense),
        "custom op": lambda: op.chain_linear(x, weights, "torch"),
        "autograd.Function": lambda: op.ChainLinear.apply(x, "torch", *weights),
        "entry point, autocast": under_autocast,
    }
    rows = []
    for name, fn in cases.items():
        fn().backward(dy)
        run.sync()
        start = time.perf_counter()
        for _ in range(setup["calls"]):
            fn().backward(dy)
        host = time.perf_counter() - start
        run.sync()
        rows.append({"case": name, "host_us_per_fwd_bwd": host / setup["calls"] * 1e6})
    return f"T2 host overhead per chain-linear fwd+bwd, {setup['tokens']} x {width}, {n} chains", rows


def loss(run: Run, setup: dict) -> tuple[str, list[dict]]:
    from benchmarks.loss import checkpointed_head_loss
    from colm_core.losses import FusedChainCrossEntropy

    n, vocab, tokens = setup["chains"], setup["vocab"], setup["tokens"]
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, setup["width"], generator=gen).to(run.device).requires_grad_()
    blocks = [
        (torch.randn(vocab, setup["width"] // n, generator=gen) * 0.02).to(run.device).requires_grad_()
        for _ in range(n)
    ]
    y = torch.randint(0, vocab, (tokens,), generator=gen).to(run.device)
    starts = [0, *(setup["width"] // n * (k + 1) for k in range(n))]

    def materialised(scales):
        return sum(
            F.cross_entropy(F.linear(h[:, : starts[k]], torch.cat(blocks[:k], dim=1)).float(), y, reduction="sum")
            for k in scales
        )

    def fused(scales):
        return FusedChainCrossEntropy.apply(h, y, torch.ones(len(scales), device=run.device), tuple(scales), *blocks)[0]

    arms = {
        "materialised fp32 logits": materialised,
        "checkpointed (before)": lambda scales: checkpointed_head_loss(h, blocks, y, scales).sum(),
        "fused": fused,
    }
    rows = []
    for scales in ([n], list(range(1, n + 1))):
        results = {}
        for name, arm in arms.items():

            def step(arm=arm):
                h.grad = None
                for b in blocks:
                    b.grad = None
                with run.autocast():
                    total = arm(scales)
                total.backward()
                return total

            peak = run.peak_gib(step)
            results[name] = (step().detach(), blocks[0].grad.clone())
            rows.append({"scales": str(scales), "loss": name, "ms": run.ms(step), "peak_gib": peak})
        ref_loss, ref_grad = results["materialised fp32 logits"]
        for r in rows[-len(arms) :]:
            got_loss, got_grad = results[r["loss"]]
            r["loss_rel_diff"] = relative_error(got_loss, ref_loss)
            r["head_grad_rel_diff"] = relative_error(got_grad, ref_grad)
            r["vs_materialised"] = rows[-len(arms)]["ms"] / r["ms"]
    return f"T3 loss fwd+bwd, {tokens} tokens, vocab {vocab}, width {setup['width']}, {n} chains", rows


def step(run: Run, setup: dict) -> tuple[str, list[dict]]:
    from transformers import LlamaForCausalLM

    from benchmarks.loss import checkpointed_loss
    from colm_core.losses import MultiScaleLoss
    from colm_core.model import CoLM

    s = setup
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"] + 1), device=run.device)
    x, targets = ids[:, :-1], ids[:, 1:]
    tokens = x.numel()

    def llama():
        with torch.device(run.device):  # initialised where it trains
            model = LlamaForCausalLM(llama_config(s)).train()
        loss = lambda: F.cross_entropy(model(x).logits.float().flatten(0, 1), targets.flatten(), reduction="sum")  # noqa: E731
        return model, {"transformers Llama": loss}

    def colm(n):
        cfg = chained_config(s, n)
        with torch.device(run.device):
            model = CoLM(cfg)
        model.init_weights().train()  # drawn on the CPU (its generator), copied tensor by tensor
        fused = MultiScaleLoss(model, [n])
        variants = {
            f"colm {n} chains, fused loss": ("torch", lambda: fused(x, targets).total),
            f"colm {n} chains, checkpointed loss (before)": (
                "torch",
                lambda: checkpointed_loss(model, x, targets, [n]).sum(),
            ),
        }
        if n > 1:
            variants[f"colm {n} chains, fused loss, masked"] = ("masked", lambda: fused(x, targets).total)
        return model, {name: with_backend(backend, fn) for name, (backend, fn) in variants.items()}

    rows = []
    for build in (llama, lambda: colm(1), lambda: colm(4)):
        model, variants = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=run.cuda or None)
        host = {}

        def train_step(name, loss, optimizer):
            def run_step():
                start = time.perf_counter()
                with run.autocast():
                    total = loss()
                total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                host.setdefault(name, []).append(time.perf_counter() - start)
                run.sync()

            return run_step

        steps = {name: train_step(name, loss, optimizer) for name, loss in variants.items()}
        timed = {name: (lambda fn=fn: _seconds(fn, run)) for name, fn in steps.items()}
        seconds = {name: statistics.median(v) for name, v in interleaved(timed, s["repeats"], warmup=3).items()}
        host_ms = {name: statistics.median(v[-s["repeats"] :]) * 1e3 for name, v in host.items()}
        peaks = {name: run.peak_gib(fn) for name, fn in steps.items()}  # warm: the optimizer's state exists
        for name, sec in seconds.items():
            rows.append(
                {
                    "model": name,
                    "ms": sec * 1e3,
                    "tokens_per_second": tokens / sec,
                    "peak_gib": peaks[name],
                    "host_ms": host_ms[name],
                }
            )
        del model, optimizer, variants, steps, timed
        if run.cuda:
            torch.cuda.empty_cache()
    llama_ms = rows[0]["ms"]
    for r in rows:
        r["vs_transformers"] = llama_ms / r["ms"]
    return (
        f"T4 training step, {s['layers']} layers, width {s['width']}, vocab {s['vocab']}, "
        f"{s['batch']} x {s['seq']} tokens, {run.dtype} autocast, AdamW"
    ), rows


def _seconds(fn, run: Run) -> float:
    run.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def with_backend(backend: str, fn):
    def run():
        os.environ["COLM_KERNELS"] = backend
        return fn()

    return run


TABLES = {"T1": ("t1", kernels), "T2": ("t2", overhead), "T3": ("t3", loss), "T4": ("t4", step)}


def main() -> None:
    p = parser(__doc__, "gpu_verify")
    p.add_argument("--quick", action="store_true", help="tiny shapes, on a CPU in seconds (a smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tables", default=",".join(TABLES), help="which tables, comma-separated (default: %(default)s)")
    args = p.parse_args()
    set_threads(args.threads)
    run, shapes = Run(args.device, args.quick), QUICK if args.quick else FULL
    name = torch.cuda.get_device_name() if run.cuda else "cpu"
    payload = {"device": name, "torch": torch.__version__, "quick": args.quick, "tables": {}}
    backend = os.environ.get("COLM_KERNELS")
    try:
        for table in args.tables.split(","):
            key, fn = TABLES[table]
            start = time.perf_counter()
            title, rows = fn(run, shapes[key])
            payload["tables"][table] = {"title": title, "seconds": time.perf_counter() - start, "rows": rows}
            columns = list(rows[0])
            report(
                f"{title} on {name}",
                columns,
                [[f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else v for v in r.values()] for r in rows],
                payload,
                args.out,
            )
    finally:
        if backend is None:
            os.environ.pop("COLM_KERNELS", None)
        else:
            os.environ["COLM_KERNELS"] = backend


if __name__ == "__main__":
    main()
