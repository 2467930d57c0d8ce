"""GPU decode at the Llama-3.2-1B shape: colm eager and graphed (compile_step) at 1 and 4 chains beside
transformers' eager `generate`, and CoLM-Air prefill with chain 1 against all chains (issue 24's goals).

    python -m benchmarks.gpu_decode [--quick] [--device cuda] [--out benchmarks/results/gpu_decode.json]

Decode table: bfloat16, a 128-token prompt, 128 new tokens (EOS disabled), batch 1 and 32. tokens/s is
batch x new tokens over the wall time of the whole call, prompt included, for every row alike;
"vs transformers" divides by transformers' tokens/s at the same batch; "greedy equal" says whether the
graphed run gave the eager run's tokens (and up to which token all rows did: equal_prefix). Every case runs once first (compilation, CUDA-graph
recording), then `--repeats` times interleaved; the median is reported.
Prefill table: a CoLM-Air model of the same shape (chain 1's 2 KV heads shared) fills its KV cache with
prompts of 2K to 32K tokens, `--chunk` tokens at a time so that memory stays bounded, at chain 1 (what
`colm generate` does on Air) and at all 4 chains.
Weights are random, initialised on the device. --quick shrinks every shape so that it runs on a CPU
in seconds (a smoke test: its numbers mean nothing). `decode_table(args)` is the whole measurement,
for a verification script to call.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved_medians, parser, report, set_threads
from colm_core import generation
from colm_core.config import INIT_STD, PRESETS
from colm_core.generation import KVCache, extend, generate_batch, kv_heads_needed
from colm_core.llama import config_to_hf
from colm_core.model import CoLM
from colm_core.options import GenerateOptions
from colm_core.tokenizer import ByteTokenizer

NO_EOS = -1
FULL = dict(
    config=PRESETS["llama-1b"], prompt=128, new=128, batches=[1, 32], repeats=1, prefill=[2048, 8192, 32768], chunk=2048
)
QUICK = dict(
    config=PRESETS["tiny"].replace(vocab_size=512, n_layers=2, max_seq_len=512),
    prompt=16,
    new=8,
    batches=[1, 4],
    repeats=1,
    prefill=[64, 128],
    chunk=32,
)


@torch.no_grad()
def on_device(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights drawn on the device (a 1B model initialised on the CPU and copied takes minutes)."""
    model = model.to(device=device, dtype=dtype)
    for name, p in model.named_parameters():
        p.fill_(1) if "norm" in name else p.normal_(0, INIT_STD)
    return model.eval()


def colm_model(cfg, device, dtype) -> CoLM:
    with torch.device(device):
        return on_device(CoLM(cfg, ByteTokenizer()), device, dtype)


def llama_model(cfg, device, dtype):
    """transformers' Llama of the 4-chain CoLM's full width (each chain's blocks one dense block)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = cfg.replace(heads=[sum(cfg.heads)], kv_heads=[sum(cfg.kv_heads)], ffn=[sum(cfg.ffn)])
    hf_cfg = LlamaConfig(**config_to_hf(dense))
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = on_device(LlamaForCausalLM(hf_cfg), device, dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def decode_rows(setup: dict, device: str, dtype: torch.dtype, sync) -> list[dict]:
    cfg = setup["config"]
    colm, hf = colm_model(cfg, device, dtype), llama_model(cfg, device, dtype)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in setup["batches"]:
        prompts = torch.randint(0, cfg.vocab_size, (batch, setup["prompt"]), generator=gen)
        tokens = {}

        def colm_run(chains, graphed):
            def run():
                options = GenerateOptions(max_new_tokens=setup["new"], chains=chains)
                records = generate_batch(colm, prompts.tolist(), options, eos_id=NO_EOS, compile_step=graphed)
                tokens[chains, graphed] = [r["token_ids"] for r in records]

            return run

        def hf_run():
            hf.generate(prompts.to(device), max_new_tokens=setup["new"], min_new_tokens=setup["new"], do_sample=False)

        cases = {"transformers generate": hf_run}
        for chains in (4, 1):
            for graphed in (False, True):
                cases[f"colm {chains} chain{'s' * (chains > 1)}, {'graphed' if graphed else 'eager'}"] = colm_run(
                    chains, graphed
                )
        seconds = interleaved_medians(cases, setup["repeats"], sync=sync)
        per_s = {name: batch * setup["new"] / s for name, s in seconds.items()}
        for name, value in per_s.items():
            chains = None if name.startswith("transformers") else int(name.split()[1])
            rows.append(
                {
                    "table": "decode",
                    "case": name,
                    "batch": batch,
                    "chains": chains,
                    "seconds": seconds[name],
                    "tokens_per_s": value,
                    "vs_transformers": value / per_s["transformers generate"],
                    "greedy_equal": None if chains is None else tokens[chains, True] == tokens[chains, False],
                    "greedy_equal_prefix": None
                    if chains is None
                    else equal_prefix(tokens[chains, True], tokens[chains, False]),
                }
            )
    return rows


def equal_prefix(rows: list[list[int]], others: list[list[int]]) -> int:
    """How many first tokens every row has in common with its other run: in bfloat16, a graphed step rounds
    differently from an eager one (one LM-head product instead of one per chain, attention over the whole
    capacity), so where two logits tie to bfloat16's precision the greedy tokens may part."""
    return min(next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), len(r)) for r, o in zip(rows, others))


@torch.inference_mode()
def prefill(model: CoLM, ids: torch.Tensor, chains: int, chunk: int) -> None:
    cache = KVCache(model, kv_heads_needed(model.config, chains), ids.shape[1])
    for start in range(0, ids.shape[1], chunk):
        extend(model, cache, ids[:, start : start + chunk], chains)


def prefill_rows(setup: dict, device: str, dtype: torch.dtype, sync) -> list[dict]:
    cfg = setup["config"]
    air = cfg.replace(
        kv_share=True,
        kv_heads=[cfg.kv_heads[0]] + [0] * (cfg.n_chains - 1),
        max_seq_len=max(cfg.max_seq_len, max(setup["prefill"])),
    )
    model = colm_model(air, device, dtype)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in setup["prefill"]:
        ids = torch.randint(0, cfg.vocab_size, (1, length), generator=gen).to(device)
        cases = {
            chains: (lambda chains=chains: prefill(model, ids, chains, setup["chunk"])) for chains in (1, cfg.n_chains)
        }
        seconds = interleaved_medians(cases, setup["repeats"], sync=sync)
        for chains, s in seconds.items():
            rows.append(
                {
                    "table": "air prefill",
                    "case": f"air prefill, {chains} chain{'s' * (chains > 1)}",
                    "prompt_tokens": length,
                    "chains": chains,
                    "seconds": s,
                    "tokens_per_s": length / s,
                    "vs_all_chains": seconds[cfg.n_chains] / s,
                }
            )
    return rows


def decode_table(args) -> dict:
    """Both tables as a JSON-ready dict: device, settings, rows, and issue 24's ratios."""
    quick, device = getattr(args, "quick", False), getattr(args, "device", "cuda")
    setup = dict(QUICK if quick else FULL)
    if getattr(args, "repeats", None):
        setup["repeats"] = args.repeats
    dtype = getattr(torch, getattr(args, "dtype", "bfloat16"))
    sync = torch.cuda.synchronize if device == "cuda" else None
    if device == "cpu":  # the smoke test: inductor's C++ build of each graph takes minutes; the same capture without it
        generation.COMPILED_STEPS.setdefault(
            "cpu", torch.compile(generation.decode_step, backend="aot_eager", fullgraph=True, dynamic=False)
        )
    rows = decode_rows(setup, device, dtype, sync) + prefill_rows(setup, device, dtype, sync)

    def decode(case, batch):
        return next(
            r["tokens_per_s"] for r in rows if r["table"] == "decode" and r["case"] == case and r["batch"] == batch
        )

    big, mid = setup["batches"][-1], setup["prefill"][len(setup["prefill"]) // 2]
    ratios = {
        "batch 1, 4 chains graphed vs transformers (goal >= 5)": decode("colm 4 chains, graphed", 1)
        / decode("transformers generate", 1),
        "batch 1, 1 chain vs 4 chains, graphed (goal >= 2.5)": decode("colm 1 chain, graphed", 1)
        / decode("colm 4 chains, graphed", 1),
        f"batch {big}, 1 chain vs 4 chains, graphed (goal >= 4)": decode("colm 1 chain, graphed", big)
        / decode("colm 4 chains, graphed", big),
        f"batch {big}, 4 chains graphed vs transformers (goal >= 2)": decode("colm 4 chains, graphed", big)
        / decode("transformers generate", big),
        f"air prefill {mid} tokens, chain 1 vs all chains (goal >= 2.5)": next(
            r["vs_all_chains"]
            for r in rows
            if r["table"] == "air prefill" and r["prompt_tokens"] == mid and r["chains"] == 1
        ),
    }
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    settings = {k: v for k, v in setup.items() if k != "config"}
    return {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "quick": quick,
        "config": setup["config"].to_dict(),
        "settings": settings,
        "rows": rows,
        "ratios": ratios,
    }


def main():
    p = parser(__doc__, "gpu_decode")
    p.add_argument("--quick", action="store_true", help="tiny shapes (runs on CPU in seconds; a smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument(
        "--repeats",
        type=int,
        help="timed runs per case after the first (default 1: an eager 1B decode takes seconds a run)",
    )
    args = p.parse_args()
    set_threads(args.threads)
    payload = decode_table(args)
    fmt = lambda v: "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [
        [
            r["case"],
            r.get("batch", r.get("prompt_tokens")),
            fmt(r["tokens_per_s"]),
            fmt(r.get("vs_transformers", r.get("vs_all_chains"))),
            fmt(r.get("greedy_equal_prefix")),
        ]
        for r in payload["rows"]
    ]
    notes = [f"{name}: {value:.2f}x" for name, value in payload["ratios"].items()]
    report(
        f"decode and Air prefill on {payload['device']}, {payload['dtype']}, median of {payload['settings']['repeats']}",
        ["case", "batch / prompt tokens", "tokens/s", "vs transformers / vs all chains", "greedy equal tokens"],
        cells,
        payload,
        args.out,
        notes,
    )


if __name__ == "__main__":
    main()
