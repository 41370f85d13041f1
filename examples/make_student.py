"""Build the toy student: the embedded default model with every third layer kept.

SmolLM2-135M-Instruct has 30 decoder layers; keeping layers 0, 3, 6, ... leaves 10, a
student of about half the parameters (the embeddings are most of the rest) that shares
the teacher's tokenizer and chat template. A toy pair, made with transformers and no
download:

    python examples/make_student.py --every 3 --out runs/student
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None, help="teacher model (default: the embedded default)")
    parser.add_argument("--every", type=int, default=3, help="keep one decoder layer in EVERY")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd_cli.model.load import resolve_model

    source = resolve_model(args.teacher)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    layers = model.model.layers
    keep = list(range(0, len(layers), args.every))
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by layer
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"make_student: kept layers {keep} of {len(layers)}; {params / 1e6:.1f}M parameters -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
