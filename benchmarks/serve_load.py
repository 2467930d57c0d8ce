"""`colm serve` under a bounded load: tokens/s and p50/p99 request latency at each fixed chain count and
with --elastic (NAME@auto), the same clients and requests in every scenario.

    python -m benchmarks.serve_load [--clients 16] [--requests 4] [--max-tokens 32] [--max-wait-ms 250]
    python -m benchmarks.serve_load --device cuda --dtype bfloat16 --preset small

The model: the preset's shape as a 4-chain CoLM-Air (chain 1 holds the 2 shared KV heads), random weights
and no EOS, so every request generates exactly --max-tokens tokens. Each scenario starts its own
`colm serve` process (the real CLI, on a free loopback port), sends --clients concurrent clients x
--requests requests each (a prompt of --prompt-tokens bytes), then stops the server with SIGTERM.
Latency is from sending a request to its whole answer; tokens/s counts every completion token over the
scenario's wall time. The server's resident memory is read before and after the load. Prints a table,
writes JSON.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import parser, report
from colm_core.checkpoint import save
from colm_core.config import PRESETS
from colm_core.model import CoLM
from colm_core.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[1]
NAME = "bench"


def write_checkpoint(directory: Path, preset: str) -> int:
    cfg = PRESETS[preset].replace(kv_share=True, kv_heads=[2, 0, 0, 0], eos_token_id=None)
    model = CoLM(cfg, ByteTokenizer()).init_weights(seed=0).eval()
    save(model, directory / NAME)
    return cfg.n_chains


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_scenario(checkpoint: Path, model: str, flags: list[str], args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "colm_cli",
            "serve",
            str(checkpoint),
            "--port",
            "0",
            "--max-batch",
            str(args.max_batch),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        if not url:
            log.seek(0)
            raise SystemExit(f"colm serve did not start: {log.read()}")
        prompt = ("It is a truth universally acknowledged, that a single man in possession of a good fortune " * 8)[
            : args.prompt_tokens - 1
        ]  # the byte tokenizer adds BOS
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}).encode()

        def one_request(_):
            start = time.perf_counter()
            request = urllib.request.Request(
                f"{url}/completions", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as response:
                    answer = json.loads(response.read())
                return time.perf_counter() - start, answer["usage"]["completion_tokens"], answer["model"]
            except Exception as e:  # noqa: BLE001 - an error is a result of the load test
                return time.perf_counter() - start, 0, f"error: {e}"

        one_request(0)  # warm-up
        memory_before = resident_mib(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one_request, range(args.clients * args.requests)))
        wall = time.perf_counter() - start
        memory_after = resident_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    latencies = sorted(seconds for seconds, _, _ in results)
    errors = sum(served.startswith("error") for _, _, served in results)
    return {
        "model": model,
        "flags": flags,
        "requests": len(results),
        "errors": errors,
        "completion_tokens": sum(tokens for _, tokens, _ in results),
        "wall_s": wall,
        "tokens_per_s": sum(tokens for _, tokens, _ in results) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "served_by": dict(sorted(Counter(served for _, _, served in results).items())),
        "rss_mib_before": memory_before,
        "rss_mib_after": memory_after,
    }


def main() -> None:
    p = parser(__doc__, "serve_load", threads=1)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="colm serve --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=250.0, help="colm serve --max-wait-ms for NAME@auto")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    args = p.parse_args()
    device = [*(["--device", args.device] if args.device else []), *(["--dtype", args.dtype] if args.dtype else [])]
    with tempfile.TemporaryDirectory() as tmp:
        n = write_checkpoint(Path(tmp), args.preset)
        checkpoint = Path(tmp) / NAME
        scenarios = [(f"{NAME}@{k}", device) for k in range(n, 0, -1)]
        scenarios.append((f"{NAME}@auto", [*device, "--elastic", "--max-wait-ms", str(args.max_wait_ms)]))
        results = [run_scenario(checkpoint, model, flags, args) for model, flags in scenarios]
    rows = [
        [
            r["model"] + (f" (--max-wait-ms {args.max_wait_ms:g})" if "--elastic" in r["flags"] else ""),
            r["requests"],
            r["errors"],
            r["tokens_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            ", ".join(f"{name.partition('@')[2]}: {count}" for name, count in r["served_by"].items()),
            f"{r['rss_mib_before']:.0f} -> {r['rss_mib_after']:.0f}",
        ]
        for r in results
    ]
    load = (
        f"{args.clients} clients x {args.requests} requests, {args.prompt_tokens}-token prompts, "
        f"{args.max_tokens} new tokens each, --max-batch {args.max_batch}"
    )
    report(
        f"colm serve under load ({args.preset} preset shape, 4-chain CoLM-Air; {load})",
        ["model", "requests", "errors", "tokens/s", "p50 ms", "p99 ms", "served by k", "server RSS MiB"],
        rows,
        {"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
        args.out,
    )


if __name__ == "__main__":
    main()
