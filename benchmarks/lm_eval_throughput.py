"""lm-eval loglikelihood throughput: the `colm` model on a 1-chain CoLM vs lm-eval's own `hf` model on its
`colm export --format hf-llama`, the same requests side by side.

    python -m benchmarks.lm_eval_throughput [--preset tiny] [--vocab-size 32000] [--requests 64] [--repeats 3]
    python -m benchmarks.lm_eval_throughput --preset small --device cuda --dtype bfloat16

Model: a preset's shape as one chain of its full width (tiny: 4 layers, hidden 256, 8 query heads, 4 KV
heads, FFN 704), random weights (speed does not depend on them), with an LM head of --vocab-size rows
(32000 by default, a Llama-2-sized vocabulary; the byte tokenizer uses the first 258, --vocab-size 258
is the byte model itself). The vocabulary matters: lm-eval's `hf` model takes the log-softmax over every
position of every row, colm's over the continuation positions only.
Requests: multiple-choice-like loglikelihood requests over prose (Austen's Persuasion, or the corpus
`colm train` embeds where the books directory is absent): a context of 50-200 characters and 4
continuations each, two of them one letter, which both models score in one shared row (lm-eval's
Collator). Both models get the same batch size; the repeats are interleaved and the median is
reported, with the largest log-likelihood difference between the two as a check that they computed
the same thing. Prints a table, writes JSON.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from benchmarks.common import BOOKS, interleaved, medians, parser, report, set_threads
from colm_core.checkpoint import parse_dtype, save
from colm_core.config import PRESETS
from colm_core.export import export
from colm_core.lm_eval_adapter import ColmLM
from colm_core.model import CoLM
from colm_core.tokenizer import ByteTokenizer

PROSE = BOOKS / "persuasion.txt"


def dense_model(preset: str, vocab_size: int, max_seq_len: int) -> CoLM:
    cfg = PRESETS[preset]
    cfg = cfg.replace(
        heads=[sum(cfg.heads)],
        kv_heads=[sum(cfg.kv_heads)],
        ffn=[sum(cfg.ffn)],
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
    )
    return CoLM(cfg, ByteTokenizer()).init_weights(seed=0).eval()


def prose() -> str:
    """Persuasion from the books directory (benchmarks.common.BOOKS), or without it the corpus `colm train` embeds."""
    from colm_core.data import default_corpus_files, read_texts

    return " ".join(" ".join(read_texts([PROSE] if PROSE.is_file() else default_corpus_files())).split())


def requests(n: int, seed: int = 0) -> list[Instance]:
    """n loglikelihood requests: n // 4 contexts, each with 4 continuations ("A", "B" and two of prose)."""
    text, rng = prose(), random.Random(seed)
    out = []
    for doc in range(n // 4):
        start = rng.randrange(len(text) - 1000)
        context = text[start : start + rng.randint(50, 200)]
        endings = [" " + text[s : s + rng.randint(5, 30)] for s in (rng.randrange(len(text) - 40) for _ in range(2))]
        for ending in ["A", "B", *endings]:
            out.append(Instance("loglikelihood", {}, (context, ending), len(out), ("bench", doc, 1)))
    return out


def main() -> None:
    p = parser(__doc__, "lm_eval_throughput")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model shape (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=32000, help="LM head rows (default: %(default)s)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    work = requests(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        save(dense_model(args.preset, args.vocab_size, max_seq_len=512), Path(tmp, "colm"))
        export(Path(tmp, "colm"), Path(tmp, "hf"), fmt="hf-llama", verify=False)
        colm = ColmLM(
            str(Path(tmp, "colm")), batch_size=args.batch_size, device=args.device, dtype=parse_dtype(args.dtype)
        )
        hf = HFLM(pretrained=str(Path(tmp, "hf")), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def rate(lm):
        def run():
            sync()
            start = time.perf_counter()
            scores = lm.loglikelihood(work, disable_tqdm=True)
            sync()
            return len(work) / (time.perf_counter() - start), scores

        return run

    runs = interleaved(
        {"colm (lm-eval model `colm`)": rate(colm), "transformers Llama (lm-eval model `hf`)": rate(hf)}, args.repeats
    )
    result = medians({name: [r for r, _ in values] for name, values in runs.items()})
    colm_scores, hf_scores = (values[-1][1] for values in runs.values())
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(colm_scores, hf_scores))
    ratio = result["colm (lm-eval model `colm`)"] / result["transformers Llama (lm-eval model `hf`)"]
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    where = device_name if device_name != "cpu" else f"CPU, {torch.get_num_threads()} threads"
    payload = {
        "device": device_name,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "requests": len(work),
        "median_requests_per_s": result,
        "samples": {name: [r for r, _ in values] for name, values in runs.items()},
        "colm_vs_hf": ratio,
        "max_abs_loglikelihood_diff": max_diff,
    }
    report(
        f"lm-eval loglikelihood on {where}, {args.dtype}, {args.preset} shape, vocabulary {args.vocab_size}, "
        f"{len(work)} requests, batch {args.batch_size}, "
        f"median of {args.repeats}",
        ["model", "requests/s"],
        [[name, v] for name, v in result.items()],
        payload,
        args.out,
        [f"colm vs hf: {ratio:.2f}x (goal >= 1x); largest log-likelihood difference {max_diff:.2e}"],
    )


if __name__ == "__main__":
    main()
