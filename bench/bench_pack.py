"""Packing quality and speed of `dasd pack`.

Rows:
- sequences used by global best-fit decreasing (BFD) on 20,000 lengths drawn from a
  log-normal (median 5,000 tokens, sigma 1.0, draws over the capacity redrawn),
  capacity 32,768, against the lower bound ceil(total / capacity) and against the
  common practice: greedy knapsack filling over chunks of 1,000 samples;
- seconds to pack 1,000,000 such lengths, BFD against the chunked greedy (alternated);
- tokenizing with the real SmolLM2 tokenizer: batched (encode_batch) against one record
  at a time (encode_example), alternated, in samples/s;
- end-to-end `dasd pack` samples/s (subprocess, JSONL in, packed zstd out), against
  `dasd pack --no-pack` on the same input, and the start-up time (empty input), alternated.
"""

from __future__ import annotations

import bisect
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from before import before_module
from dasd_cli.core.pack import best_fit_decreasing, lower_bound, plan_sequences

CAPACITY = 32768  # tokens per sequence
MEDIAN = 5000  # tokens, median sample length
SIGMA = 1.0  # log-normal shape
CHUNK = 1000  # samples per greedy-knapsack call in the baseline


def lognormal_lengths(n: int, seed: int = 0) -> np.ndarray:
    """n lengths from the log-normal, redrawing those over the capacity (never clipped)."""
    rng = np.random.default_rng(seed)
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        draw = np.round(rng.lognormal(math.log(MEDIAN), SIGMA, n)).astype(np.int64)
        out = np.concatenate([out, draw[(draw >= 1) & (draw <= CAPACITY)]])
    return out[:n]


def greedy_knapsack(lengths: np.ndarray, capacity: int, chunk: int = CHUNK) -> int:
    """Baseline: per chunk, fill one sequence at a time with the largest sample that fits."""
    sequences = 0
    values = lengths.tolist()
    for start in range(0, len(values), chunk):
        remaining = sorted(values[start:start + chunk])
        while remaining:
            free = capacity
            while True:
                i = bisect.bisect_right(remaining, free) - 1
                if i < 0:
                    break
                free -= remaining.pop(i)
            sequences += 1
    return sequences


def quality_rows(n: int) -> list[dict]:
    lengths = lognormal_lengths(n, seed=1)
    used = int(best_fit_decreasing(lengths, CAPACITY).max()) + 1
    bound = lower_bound(lengths, CAPACITY)
    greedy = greedy_knapsack(lengths, CAPACITY)
    note = f"{n} log-normal lengths (median {MEDIAN}, sigma {SIGMA}), capacity {CAPACITY}"
    return [
        {"metric": "sequences (BFD) vs lower bound", "value": used, "unit": "sequences",
         "baseline": "ceil(total/L)", "baseline_value": bound, "ratio": used / bound,
         "goal": "ratio <= 1.001", "note": note},
        {"metric": "sequences (BFD) vs chunked greedy", "value": used, "unit": "sequences",
         "baseline": f"greedy knapsack per {CHUNK}", "baseline_value": greedy,
         "ratio": used / greedy, "goal": "ratio < 1", "note": note},
    ]


def speed_rows(n: int, repeats: int) -> list[dict]:
    lengths = lognormal_lengths(n, seed=2)
    before = before_module("dasd_cli/core/pack.py")
    old_plan = before.plan_sequences if before else None
    bfd, greedy, old = [], [], []
    for _ in range(repeats):  # alternate the sides: this machine has slow phases
        start = time.perf_counter()
        members, _ = plan_sequences(lengths, CAPACITY)  # best-fit decreasing, members of each sequence
        bfd.append(time.perf_counter() - start)
        start = time.perf_counter()
        greedy_knapsack(lengths, CAPACITY)
        greedy.append(time.perf_counter() - start)
        if old_plan is not None:
            start = time.perf_counter()
            old_members, _ = old_plan(lengths, CAPACITY)
            old.append(time.perf_counter() - start)
            if len(old_members) != len(members) or not all(
                    np.array_equal(a, b) for a, b in zip(old_members, members)):
                raise AssertionError("the plan differs from the earlier source's")
    rows = [speed_row_of(n, repeats, bfd, greedy)]
    if old:
        rows.append({"metric": f"seconds to plan {n} lengths: this checkout vs the earlier one",
                     "value": min(bfd), "unit": "s", "baseline": "plan_sequences of DASD_BENCH_BEFORE",
                     "baseline_value": min(old), "ratio": min(bfd) / min(old), "goal": "value < 1 s",
                     "note": f"best of {repeats}, alternated; identical plans"})
    return rows


def speed_row_of(n: int, repeats: int, bfd: list[float], greedy: list[float]) -> dict:
    return {"metric": f"seconds to plan {n} lengths into sequences", "value": min(bfd), "unit": "s",
            "baseline": f"greedy knapsack per {CHUNK}", "baseline_value": min(greedy),
            "ratio": min(bfd) / min(greedy), "goal": "value < 1 s (one core)",
            "note": f"best of {repeats}, alternated"}


def synthetic_records(n: int, seed: int = 3) -> list[dict]:
    """Response records with thinking, about 40-2,000 words of response each."""
    rng = random.Random(seed)
    vocab = ("so we add the two numbers then check the result again carefully because "
             "x equals 12 and y is 7 therefore sum product = 84 wait let me verify").split()
    records = []
    for i in range(n):
        words = min(2000, max(40, int(rng.lognormvariate(math.log(300), 0.8))))
        think = " ".join(rng.choice(vocab) for _ in range(words))
        records.append({"id": f"b{i}", "prompt_id": f"q{i}", "domain": "math",
                        "messages": [{"role": "user", "content": f"What is {i} times {i + 3}?"}],
                        "response": f"<think>\n{think}\n</think>\n\nThe answer is {i * (i + 3)}."})
    return records


def tokenize_row(records: list[dict], repeats: int) -> dict:
    from dasd_cli.model.load import load_tokenizer
    from dasd_cli.core.chat import encode_example, prompt_messages
    from dasd_cli.core.pack import encode_batch

    tokenizer = load_tokenizer(None)
    pairs = [(prompt_messages(r), r["response"]) for r in records]
    batched, single = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(0, len(pairs), 256):
            encode_batch(tokenizer, pairs[k:k + 256])
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        for messages, response in pairs:
            encode_example(tokenizer, messages, response)
        single.append(time.perf_counter() - start)
    n = len(pairs)
    return {"metric": "tokenize samples/s (SmolLM2)", "value": n / min(batched), "unit": "samples/s",
            "baseline": "encode_example one at a time", "baseline_value": n / min(single),
            "ratio": min(single) / min(batched), "goal": "ratio > 1",
            "note": f"{n} records, best of {repeats}, alternated, in-process"}


def end_to_end_rows(records: list[dict], repeats: int) -> list[dict]:
    import orjson

    dasd = [str(Path(sys.executable).with_name("dasd"))]
    if not Path(dasd[0]).exists():
        dasd = [sys.executable, "-m", "dasd_cli.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "in.jsonl"
        data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        out = Path(tmp) / "out.jsonl.zst"

        empty = Path(tmp) / "empty.jsonl"
        empty.write_bytes(b"")

        def timed(extra: list[str], source: Path = data) -> float:
            start = time.perf_counter()
            subprocess.run(dasd + ["pack", "--quiet", "--cutoff-len", "32768", *extra,
                                   "-o", str(out), str(source)], check=True)
            return time.perf_counter() - start

        packed, unpacked, startup = [], [], []
        for _ in range(repeats):  # alternated
            packed.append(timed([]))
            unpacked.append(timed(["--no-pack"]))
            startup.append(timed([], empty))
    n = len(records)
    steady = n / max(1e-9, min(packed) - min(startup))
    return [
        {"metric": "dasd pack end-to-end samples/s", "value": n / min(packed), "unit": "samples/s",
         "baseline": "dasd pack --no-pack", "baseline_value": n / min(unpacked),
         "ratio": min(unpacked) / min(packed), "goal": "",
         "note": f"{n} synthetic records (~40-2000 words), SmolLM2 tokenizer, process start "
         f"included, best of {repeats}; {steady:.0f} samples/s after start-up"},
        {"metric": "dasd pack start-up (empty input)", "value": min(startup), "unit": "s",
         "baseline": "dasd pack end-to-end", "baseline_value": min(packed),
         "ratio": min(startup) / min(packed), "goal": "",
         "note": "interpreter, imports and tokenizer load: the share of end-to-end time"},
    ]


def run(quick: bool) -> list[dict]:
    """The benchmark rows (``quick``: smaller inputs, one repeat)."""
    repeats = 1 if quick else 3
    rows = quality_rows(20_000)
    rows.extend(speed_rows(200_000 if quick else 1_000_000, repeats))
    records = synthetic_records(300 if quick else 2000)
    rows.append(tokenize_row(records, repeats))
    rows.extend(end_to_end_rows(records, repeats))
    return rows
