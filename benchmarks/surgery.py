"""Time and peak memory of `colm slice` and `colm expand` on a ~1B-parameter checkpoint, each next to a
plain file copy of the same output size, measured in one run.

Every operation runs in its own subprocess, which reports its wall time (excluding interpreter and
torch start-up, the same for every command) and its peak resident memory (VmHWM). Repeats are
interleaved (slice, copy, expand, copy, ...) and the median is reported. Surgery runs with
--no-verify (the streaming part); verification, which loads the models, is measured once apart.

    PYTHONPATH=$PWD python benchmarks/surgery.py                      # llama-1b preset, 3 repeats
    PYTHONPATH=$PWD python benchmarks/surgery.py --preset small --repeats 1   # a quick check

Goal (issue 4): slice within 2x the copy time, peak RSS under 25% of the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.suffix == ".safetensors")


# --- child side: one operation per process ------------------------------------------------------


def child(op: str, src: Path, out: Path, value: int, verify: bool) -> None:
    import torch  # noqa: F401  (imported before the clock starts, as every colm command does)

    from colm_core import surgery

    start = time.perf_counter()
    if op == "slice":
        surgery.slice_(src, out, chains=value, verify=verify, force=True)
    elif op == "expand":
        surgery.expand(src, out, add_chains=value, verify=verify, force=True)
    elif op == "copy":  # the same bytes a surgery output holds, copied file by file
        out.mkdir()
        for f in sorted(src.iterdir()):
            shutil.copyfile(f, out / f.name)
    elif op == "digest":  # the provenance hash of the input that every surgery output records
        from colm_core.checkpoint import open_checkpoint, weights_digest

        weights_digest(open_checkpoint(src))
    elif op != "baseline":
        raise ValueError(op)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_rss": peak_rss_bytes()}))


def run_child(op: str, src: Path, out: Path, value: int = 0, verify: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", op, str(src), str(out), str(value), str(int(verify))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- parent side --------------------------------------------------------------------------------


def make_input(preset: str, path: Path) -> None:
    """A random checkpoint of the preset's shape, generated and written tensor by tensor."""
    import torch

    from colm_core.checkpoint import expected_shapes, write_checkpoint
    from colm_core.config import PRESETS
    from colm_core.tokenizer import ByteTokenizer

    cfg = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    tensors = ((name, torch.randn(shape, generator=g) * 0.02) for name, shape in expected_shapes(cfg).items())
    write_checkpoint(path, cfg, tensors, ByteTokenizer(), history=[])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama-1b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slice-chains", type=int, default=2)
    ap.add_argument("--add-chains", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "surgery.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="colm-surgery-bench-", dir=args.workdir))
    try:
        src = work / "input"
        t0 = time.perf_counter()
        make_input(args.preset, src)
        size = dir_bytes(src)
        print(f"input: {args.preset}, {size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

        results: dict[str, list[dict]] = {k: [] for k in ("slice", "slice-copy", "expand", "expand-copy", "digest")}
        baseline = run_child("baseline", src, work / "none")
        for r in range(args.repeats):
            results["digest"].append(run_child("digest", src, work / "none"))
            for op, value in (("slice", args.slice_chains), ("expand", args.add_chains)):
                out = work / f"{op}-out"
                results[op].append({**run_child(op, src, out, value), "output_bytes": dir_bytes(out)})
                results[f"{op}-copy"].append(run_child("copy", out, work / f"{op}-copy"))
                shutil.rmtree(out)
                shutil.rmtree(work / f"{op}-copy")
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        verified = {}
        for op, value in (("slice", args.slice_chains), ("expand", args.add_chains)):
            verified[op] = run_child(op, src, work / f"{op}-verified", value, verify=True)
            shutil.rmtree(work / f"{op}-verified")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("seconds", "peak_rss")} for k, v in results.items()}
    rows = []
    for op in ("slice", "expand"):
        rows.append({
            "operation": op, "seconds": med[op]["seconds"], "copy_seconds": med[f"{op}-copy"]["seconds"],
            "time_vs_copy": med[op]["seconds"] / med[f"{op}-copy"]["seconds"],
            "time_vs_copy_without_input_hash": (med[op]["seconds"] - med["digest"]["seconds"]) / med[f"{op}-copy"]["seconds"],
            "peak_rss_bytes": med[op]["peak_rss"], "peak_rss_vs_checkpoint": med[op]["peak_rss"] / size,
            "output_bytes": results[op][0]["output_bytes"],
            "verified_seconds": verified[op]["seconds"], "verified_peak_rss_bytes": verified[op]["peak_rss"],
        })
    report = {"preset": args.preset, "checkpoint_bytes": size, "repeats": args.repeats,
              "input_hash_seconds": med["digest"]["seconds"],
              "slice_chains": args.slice_chains, "add_chains": args.add_chains,
              "process_baseline_rss_bytes": baseline["peak_rss"], "results": rows, "raw": results}

    gib = 2**30
    print(f"checkpoint {size / gib:.2f} GiB ({args.preset}); median of {args.repeats}; "
          f"an idle python+torch process peaks at {baseline['peak_rss'] / gib:.2f} GiB; hashing the input "
          f"(provenance, part of every operation) takes {med['digest']['seconds']:.2f} s")
    print(f"{'operation':<10} {'output GiB':>10} {'time s':>8} {'copy s':>8} {'vs copy':>8} {'w/o hash':>9} {'peak RSS GiB':>13} "
          f"{'of ckpt':>8} {'verify: s':>10} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['operation']:<10} {r['output_bytes'] / gib:>10.2f} {r['seconds']:>8.2f} {r['copy_seconds']:>8.2f} "
              f"{r['time_vs_copy']:>7.2f}x {r['time_vs_copy_without_input_hash']:>8.2f}x {r['peak_rss_bytes'] / gib:>13.2f} {r['peak_rss_vs_checkpoint']:>7.0%} "
              f"{r['verified_seconds']:>10.2f} {r['verified_peak_rss_bytes'] / gib:>9.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        op, src, out, value, verify = sys.argv[2:7]
        child(op, Path(src), Path(out), int(value), bool(int(verify)))
    else:
        main()
