"""Train a tiny MoE model with dasd's Trainer, as one rank of a torchrun launch (tests only).

    moe_zero3_run.py MODEL DATA OUT [--deepspeed CONFIG] [--per-expert] [--no-leaf-modules]

``--per-expert`` swaps the fused Qwen3-MoE blocks for the per-expert-module layout
(moe_models.PerExpertMoe, same weights); ``--no-leaf-modules`` skips the ZeRO-3 leaf
registration (the negative control). Rank 0 prints one ``METRICS {...}`` line per step
(libraries print to stdout too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_models import to_per_expert

from dasd_cli.core.train.batching import packed_from_record
from dasd_cli.training import distributed, recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--deepspeed")
    parser.add_argument("--per-expert", action="store_true")
    parser.add_argument("--no-leaf-modules", action="store_true")
    args = parser.parse_args()
    if args.no_leaf_modules:
        distributed.set_leaf_modules = lambda model, classes: []
    config = recipe.TrainConfig(out=Path(args.out), model=args.model, dtype="fp32", epochs=1,
                                global_batch_size=2, shuffle=False, attn="segmented",
                                deepspeed=args.deepspeed, debug=True)
    trainer = recipe.Trainer(config)
    trainer.setup_model()
    if args.per_expert:
        to_per_expert(trainer.model)
        trainer._setup_moe()
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    trainer.setup_data([packed_from_record(r, trainer.vocab_size) for r in records])
    try:
        for metrics in trainer.train():
            if trainer.ranks.is_main:
                print("METRICS", json.dumps(metrics), flush=True)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
