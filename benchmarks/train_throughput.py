"""Training tokens/s on CPU: a 4-chain CoLM vs a dense 1-chain CoLM and transformers' LlamaForCausalLM.

All three have the same width, depth, heads, FFN size and vocabulary; one training step is forward,
backward and an AdamW update. The models are timed side by side: every round runs each model for
a few steps in turn (interleaved, so machine load hits them alike), and the median over rounds is
reported. The 4-chain model does about (n+1)/(2n) = 62% of the dense projection FLOPs.

    python -m benchmarks.train_throughput --threads 1 --rounds 7 --steps-per-round 1
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved_seconds, medians, parser, report, set_threads
from colm_core.config import ColmConfig
from colm_core.losses import MultiScaleLoss
from colm_core.model import CoLM


def colm_step(cfg: ColmConfig, scales_of):
    model = CoLM(cfg).init_weights(seed=0)
    loss_module = MultiScaleLoss(model, scales_of(cfg.n_chains))
    return model, lambda ids: loss_module(ids[:, :-1], ids[:, 1:]).total / ids[:, 1:].numel()


def llama_step(cfg: ColmConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=sum(cfg.chain_widths),
        intermediate_size=sum(cfg.ffn),
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=sum(cfg.heads),
        num_key_value_heads=sum(cfg.kv_heads),
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(hf)
    return model, lambda ids: model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss


def main() -> None:
    p = parser(__doc__, "train_throughput")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--heads-per-chain", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ffn-per-chain", type=int, default=704)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=258)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)

    n, h = args.chains, args.heads_per_chain
    common = dict(
        vocab_size=args.vocab_size,
        n_layers=args.layers,
        head_dim=args.head_dim,
        max_seq_len=args.seq_len + 1,
        bos_token_id=0,
        eos_token_id=1,
    )
    chained = ColmConfig(heads=[h] * n, kv_heads=[h] * n, ffn=[args.ffn_per_chain] * n, **common).validate()
    dense = ColmConfig(heads=[h * n], kv_heads=[h * n], ffn=[args.ffn_per_chain * n], **common).validate()
    contenders = {
        f"CoLM {n} chains, full loss": colm_step(chained, lambda k: [k]),
        f"CoLM {n} chains, all {n} scales": colm_step(chained, lambda k: list(range(1, k + 1))),
        "CoLM dense (1 chain)": colm_step(dense, lambda k: [k]),
        "transformers Llama": llama_step(dense),
    }
    steps = {
        name: (torch.optim.AdamW(model.parameters(), lr=1e-4), loss_fn) for name, (model, loss_fn) in contenders.items()
    }
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in contenders.items()}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
    tokens = args.batch_size * args.seq_len

    def train_steps(name: str) -> None:
        optimizer, loss_fn = steps[name]
        for _ in range(args.steps_per_round):
            loss_fn(ids).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    # The warm-up round sets up the allocator and the optimizer state.
    seconds = interleaved_seconds({name: (lambda name=name: train_steps(name)) for name in steps}, args.rounds)
    samples = {name: [args.steps_per_round * tokens / s for s in values] for name, values in seconds.items()}
    median = medians(samples)
    llama = median["transformers Llama"]
    dense_name = "CoLM dense (1 chain)"

    rows = [
        [
            name,
            f"{params[name]:,}",
            f"{median[name]:,.0f}",
            f"{median[name] / llama:.2f}x",
            f"{median[name] / median[dense_name]:.2f}x",
        ]
        for name in steps
    ]
    report(
        f"training throughput on CPU ({torch.get_num_threads()} threads), batch {args.batch_size} x "
        f"{args.seq_len} tokens, width {sum(dense.chain_widths)}, {args.layers} layers, vocab {args.vocab_size}",
        ["model", "parameters", "tokens/s", "vs Llama", "vs dense"],
        rows,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "parameters": params,
            "tokens_per_second": median,
            "samples": samples,
            "ratio_vs_llama": {k: v / llama for k, v in median.items()},
            "ratio_vs_dense": {k: v / median[dense_name] for k, v in median.items()},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
