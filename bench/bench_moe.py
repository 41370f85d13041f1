"""Training step time of a small random Qwen3-MoE under each experts implementation.

transformers 5 runs a fused ``*Experts`` module through ``experts_implementation``:
``eager`` (a Python loop over the experts that were hit), ``batched_mm`` (every token's
top-k experts gathered and multiplied in one batched matmul) or ``grouped_mm`` (tokens
sorted by expert, one grouped matmul; the library's default). One forward+backward of a
packed row through dasd's training forward (model.packed + chunked loss), in one process;
the implementations alternate and the best of the repeats counts.

    python bench/bench_moe.py [--tokens 1024] [--experts 32] [--top-k 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from dasd_cli.model import attention, moe
    from dasd_cli.training import forward

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=1000, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                            moe_intermediate_size=args.hidden // 2, num_hidden_layers=args.layers,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=args.hidden // 4,
                            num_experts=args.experts, num_experts_per_tok=args.top_k,
                            attn_implementation=attention.register())
    model = Qwen3MoeForCausalLM(config).train()
    blocks = moe.find_blocks(model)
    loss_fn = forward.make_loss_fn(model, "fused")
    lengths = [args.tokens // 4] * 4
    ids = torch.randint(0, 1000, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    best: dict[str, float] = {}
    impls = ("eager", "batched_mm", "grouped_mm")
    for _ in range(args.repeats):
        for impl in impls:
            model.set_experts_implementation(impl)
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            summed, _, aux, _ = forward.packed_losses(model, ids, ids, positions, loss_fn, blocks)
            (summed + 0.001 * aux).backward()
            best[impl] = min(best.get(impl, float("inf")), time.perf_counter() - started)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"Qwen3-MoE {args.layers} layers, hidden {args.hidden}, {args.experts} experts top-{args.top_k}, "
          f"{sum(lengths)} tokens, {device}: forward+backward, best of {args.repeats}")
    for impl in impls:
        print(f"  {impl:<11} {best[impl] * 1000:8.1f} ms   {best['eager'] / best[impl]:5.2f}x eager")


if __name__ == "__main__":
    main()
