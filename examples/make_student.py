"""Build the toy student: the embedded default model with its least important layers removed.

SmolLM2-135M-Instruct has 30 decoder layers. Block importance (ShortGPT, Men et al. 2024)
scores each layer by how much it changes the hidden state it is given, one minus the
mean cosine similarity between a layer's input and output over calibration tokens; the
layers that change it least are removed. The student shares the teacher's tokenizer and
chat template; no download.

    python examples/make_student.py --keep 20 --calibration train.prompts.jsonl --out runs/student
    python examples/make_student.py --keep 10 --by uniform --out runs/student-every-third

--calibration takes dasd records: each is rendered with the chat template, its messages
(or prompt) and, when present, its response. --by uniform keeps evenly spaced layers
(the first and last included), the baseline importance is measured against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SYSTEM = "You are a helpful assistant."


def calibration_texts(path: Path, tokenizer, limit: int) -> list[str]:
    """Chat-rendered calibration texts from a dasd record file (prompt, then any response)."""
    from dasd_cli.core.chat import prompt_messages
    from dasd_cli.io import iter_lines

    texts = []
    for line in iter_lines([str(path)]):
        record = line.record
        messages = prompt_messages(record, SYSTEM)
        if record.get("response"):
            messages = [*messages, {"role": "assistant", "content": record["response"]}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        if len(texts) >= limit:
            break
    if not texts:
        raise SystemExit(f"make_student: no records in {path}")
    return texts


def block_importance(model, tokenizer, texts: list[str]) -> list[float]:
    """Per layer: 1 - mean over tokens of cos(hidden state in, hidden state out)."""
    import torch

    layers = model.config.num_hidden_layers
    similarity = torch.zeros(layers, dtype=torch.float64)
    tokens = 0
    # transformers hands back the last hidden state after the final norm unless told not
    # to; the last layer's output must be compared before it (else the norm counts as
    # the layer's change: 0.78 instead of 0.34 for SmolLM2-135M's layer 29).
    model.config.tie_last_hidden_states = False
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            states = model(ids, output_hidden_states=True).hidden_states
            for i in range(layers):
                similarity[i] += torch.nn.functional.cosine_similarity(
                    states[i][0], states[i + 1][0], dim=-1).double().sum()
            tokens += ids.shape[1]
    return [1.0 - float(s) / tokens for s in similarity]


def uniform_layers(total: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices, the first and the last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None, help="teacher model (default: the embedded default)")
    parser.add_argument("--keep", type=int, required=True, help="decoder layers the student keeps")
    parser.add_argument("--by", choices=("importance", "uniform"), default="importance")
    parser.add_argument("--calibration", type=Path, help="dasd records to measure importance on "
                        "(required with --by importance)")
    parser.add_argument("--calibration-limit", type=int, default=256, help="records read at most")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.by == "importance" and args.calibration is None:
        parser.error("--by importance needs --calibration")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd_cli.model.load import resolve_model

    source = resolve_model(args.teacher)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    total = model.config.num_hidden_layers
    if not 1 <= args.keep <= total:
        parser.error(f"--keep must be between 1 and {total}")
    importance = None
    if args.by == "importance":
        importance = block_importance(model, tokenizer,
                                      calibration_texts(args.calibration, tokenizer, args.calibration_limit))
        keep = sorted(sorted(range(total), key=lambda i: -importance[i])[:args.keep])
    else:
        keep = uniform_layers(total, args.keep)
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index  # the KV cache is indexed by layer
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    (Path(args.out) / "pruning.json").write_text(json.dumps(
        {"teacher": str(args.teacher or "default"), "by": args.by, "kept": keep,
         "removed": [i for i in range(total) if i not in keep],
         "block_importance": importance and [round(v, 5) for v in importance]}, indent=1) + "\n")
    print(f"make_student: kept {len(keep)} of {total} layers {keep} ({args.by}); "
          f"{params / 1e6:.1f}M parameters -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(argv=None))
