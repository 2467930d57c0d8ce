"""Forward time of each k-chain sub-model of one CoLM: the cost must fall with k.

python -m benchmarks.forward_scales [--preset small] [--tokens 2048] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved_medians, parser, report, set_threads
from colm_core.config import PRESETS
from colm_core.model import CoLM


def main() -> None:
    p = parser(__doc__, "forward_scales")
    p.add_argument("--preset", default="small", choices=list(PRESETS))
    p.add_argument("--tokens", type=int, default=2048, help="tokens per forward (one sequence)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    set_threads(args.threads)

    cfg = PRESETS[args.preset]
    model = CoLM(cfg).init_weights().eval()
    ids = torch.randint(0, cfg.vocab_size, (1, min(args.tokens, cfg.max_seq_len)))
    fns = {k: (lambda k=k: model(ids, chains=k)) for k in range(1, cfg.n_chains + 1)}
    with torch.inference_mode():
        seconds = interleaved_medians(fns, args.repeats)
    full = seconds[cfg.n_chains]
    rows = [
        [k, sum(model.num_parameters(c) for c in range(1, k + 1)), seconds[k] * 1e3, full / seconds[k]] for k in seconds
    ]
    report(
        f"forward of each sub-model ({args.preset}, {ids.shape[1]} tokens, {torch.get_num_threads()} threads)",
        ["chains", "parameters", "ms", "speed-up vs all chains"],
        rows,
        {
            "preset": args.preset,
            "tokens": ids.shape[1],
            "results": [{"chains": r[0], "parameters": r[1], "ms": r[2], "speedup": r[3]} for r in rows],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
