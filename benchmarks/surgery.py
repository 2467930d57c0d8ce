"""Time and peak memory of `colm slice` and `colm expand` on a ~1B-parameter checkpoint, each next to a
plain file copy of the same output size, measured in one run.

Every operation runs in its own subprocess, which reports its wall time (excluding interpreter and
torch start-up, the same for every command) and its peak resident memory (VmHWM). Repeats are
interleaved (slice, copy, expand, copy, ...) and the median is reported. Surgery runs with
--no-verify (the streaming part); verification, which loads the models, is measured once apart.

    python -m benchmarks.surgery                                # llama-1b preset, 3 repeats
    python -m benchmarks.surgery --preset small --repeats 1     # a quick check

Goal (issue 4): slice within 2x the copy time, peak RSS under 25% of the checkpoint size.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import interleaved, parser, report

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
    elif op == "digest":  # re-hashing the input: `colm inspect --verify`, or any command on an input
        from colm_core.checkpoint import open_checkpoint, verify_digests  # without recorded digests

        verify_digests(open_checkpoint(src))
    elif op != "baseline":
        raise ValueError(op)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_rss": peak_rss_bytes()}))


def run_child(op: str, src: Path, out: Path, value: int = 0, verify: bool = False) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.surgery", "--child", op, str(src), str(out), str(value), str(int(verify))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- parent side --------------------------------------------------------------------------------


def make_input(preset: str, path: Path) -> None:
    """A random checkpoint of the preset's shape, generated and written tensor by tensor."""
    import torch

    from colm_core.checkpoint import atomic_directory, expected_shapes, write_checkpoint
    from colm_core.config import PRESETS
    from colm_core.tokenizer import ByteTokenizer

    cfg = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    tensors = ((name, torch.randn(shape, generator=g) * 0.02) for name, shape in expected_shapes(cfg).items())
    with atomic_directory(path) as tmp:
        write_checkpoint(tmp, cfg, tensors, ByteTokenizer(), history=[])


def main() -> None:
    ap = parser(__doc__, "surgery")
    ap.add_argument("--preset", default="llama-1b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slice-chains", type=int, default=2)
    ap.add_argument("--add-chains", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="colm-surgery-bench-", dir=args.workdir))

    def surgery_then_copy(op: str, value: int):
        """The operation, then a plain copy of its output: the two numbers to compare."""

        def run() -> dict:
            out = work / f"{op}-out"
            result = {**run_child(op, src, out, value), "output_bytes": dir_bytes(out)}
            result["copy"] = run_child("copy", out, work / f"{op}-copy")
            shutil.rmtree(out)
            shutil.rmtree(work / f"{op}-copy")
            return result

        return run

    try:
        src = work / "input"
        t0 = time.perf_counter()
        make_input(args.preset, src)
        size = dir_bytes(src)
        print(f"input: {args.preset}, {size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        baseline = run_child("baseline", src, work / "none")
        results = interleaved(
            {
                "digest": lambda: run_child("digest", src, work / "none"),
                "slice": surgery_then_copy("slice", args.slice_chains),
                "expand": surgery_then_copy("expand", args.add_chains),
            },
            repeats=args.repeats,
            warmup=0,
        )
        verified = {}
        for op, value in (("slice", args.slice_chains), ("expand", args.add_chains)):
            verified[op] = run_child(op, src, work / f"{op}-verified", value, verify=True)
            shutil.rmtree(work / f"{op}-verified")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(samples: list[dict], *keys: str) -> float:
        def get(sample):
            for k in keys:
                sample = sample[k]
            return sample

        return statistics.median(get(x) for x in samples)

    digest_s = median(results["digest"], "seconds")
    rows = []
    for op in ("slice", "expand"):
        seconds, copy_s = median(results[op], "seconds"), median(results[op], "copy", "seconds")
        rows.append(
            {
                "operation": op,
                "seconds": seconds,
                "copy_seconds": copy_s,
                "time_vs_copy": seconds / copy_s,
                "peak_rss_bytes": median(results[op], "peak_rss"),
                "peak_rss_vs_checkpoint": median(results[op], "peak_rss") / size,
                "output_bytes": results[op][0]["output_bytes"],
                "verified_seconds": verified[op]["seconds"],
                "verified_peak_rss_bytes": verified[op]["peak_rss"],
            }
        )
    gib = 2**30
    report(
        f"colm surgery on a {size / gib:.2f} GiB {args.preset} checkpoint, median of {args.repeats} "
        "(each operation in its own process, --no-verify; verification measured once apart)",
        [
            "operation",
            "output GiB",
            "time s",
            "copy s",
            "vs copy",
            "peak RSS GiB",
            "of ckpt",
            "verify s",
            "verify peak GiB",
        ],
        [
            [
                r["operation"],
                r["output_bytes"] / gib,
                r["seconds"],
                r["copy_seconds"],
                r["time_vs_copy"],
                r["peak_rss_bytes"] / gib,
                r["peak_rss_vs_checkpoint"],
                r["verified_seconds"],
                r["verified_peak_rss_bytes"] / gib,
            ]
            for r in rows
        ],
        {
            "preset": args.preset,
            "checkpoint_bytes": size,
            "repeats": args.repeats,
            "input_hash_seconds": digest_s,
            "slice_chains": args.slice_chains,
            "add_chains": args.add_chains,
            "process_baseline_rss_bytes": baseline["peak_rss"],
            "results": rows,
            "raw": results,
        },
        args.out,
        notes=[
            f"an idle python+torch process peaks at {baseline['peak_rss'] / gib:.2f} GiB; re-hashing the input "
            f"takes {digest_s:.2f} s (`colm inspect --verify`; surgery takes the digests the input recorded "
            "and hashes only its output, as it writes it)"
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        op, src, out, value, verify = sys.argv[2:7]
        child(op, Path(src), Path(out), int(value), bool(int(verify)))
    else:
        main()
