"""Throughput of `dasd filter` on a synthetic long-CoT corpus (zstd in, zstd out).

Rows, in MB/s of UNCOMPRESSED JSONL (the corpus is >= 200 MB, 20 MB with --quick):
- the floor: `zstd -dc corpus | zstd -c` (decompress and recompress, nothing parsed);
- `dasd filter` passthrough (--keep-truncated --keep-tool-calls --no-repetition: records
  parsed and written, no check);
- `dasd filter` with every non-model check the command offers (its defaults, plus the
  repetition filter when the command has it);
- the repetition check alone, in-process on the same responses, against parsing the
  JSON lines (orjson) as its baseline;
- verification (``--verify``), in-process, one process, main thread: math responses per
  second against math-verify's own parse-and-verify of the same answers, and code
  responses per second against starting one bare ``python -c pass`` per response; then
  the same checks on one thread per core, as ``dasd filter --verify`` runs them.
With ``DASD_BENCH_BEFORE=SRC`` (a ``src`` folder of an earlier checkout), the default
checks also run from that source as a baseline side, alternated with the others: the
speed-up of a change, measured in one run.
Sides alternate (this class of machine has slow phases); the best of the repeats counts.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zstandard

from synthetic_cot import DEGENERATE_KINDS, clean_response, degenerate_response

POOL = 1200  # distinct responses; the corpus cycles through them with fresh ids
DEGENERATE_SHARE = 0.05  # of the pool: low-temperature samples that loop or repeat


def response_pool(seed: int = 0) -> list[str]:
    """The corpus's distinct responses (tests/test_repetition_equality.py checks them too)."""
    rng = random.Random(seed)
    pool = []
    for _ in range(POOL):
        words = rng.choice((800, 2000, 4000, 8000))  # long CoT: ~5-50 KB per response
        if rng.random() < DEGENERATE_SHARE:
            text = degenerate_response(rng, rng.choice(DEGENERATE_KINDS), words)
        else:
            text = clean_response(rng, words)
        pool.append(text)
    return pool


def build_corpus(path: Path, target_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write a zstd JSONL corpus of about target_bytes (uncompressed); (bytes, records)."""
    pool = response_pool(seed)
    written = records = 0
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
        while written < target_bytes:
            text = pool[records % POOL]
            line = orjson.dumps({"id": f"p{records % 997}@0.6#{records}", "prompt_id": f"p{records % 997}",
                                 "prompt": "Solve the problem.", "response": text,
                                 "finish_reason": "stop"}) + b"\n"
            out.write(line)
            written += len(line)
            records += 1
    return written, records


def _dasd() -> list[str]:
    exe = Path(sys.executable).with_name("dasd")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dasd_cli.cli import main; main()"]


def _time_shell(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(quick: bool) -> list[dict]:
    if shutil.which("zstd") is None:
        raise RuntimeError("the zstd CLI is needed for the floor: apt-get install zstd")
    target = (20 if quick else 200) * 10**6
    repeats = 2 if quick else 3
    folder = Path(tempfile.mkdtemp(prefix="dasd-bench-filter-"))
    try:
        corpus = folder / "corpus.jsonl.zst"
        size, records = build_corpus(corpus, target)
        dasd = " ".join(_dasd())
        sides = {
            "floor": f"zstd -dc {corpus} | zstd -q -c",
            "passthrough": f"{dasd} filter --quiet --keep-truncated --keep-tool-calls --no-repetition "
                           f"{corpus} --compress zstd",
            "all": f"{dasd} filter --quiet {corpus} --compress zstd",
        }
        before = os.environ.get("DASD_BENCH_BEFORE")
        if before:
            sides["before"] = (f"PYTHONPATH={Path(before).resolve()} {sys.executable} -c "
                               f"'from dasd_cli.cli import main; main()' filter --quiet {corpus} --compress zstd")
        best = {name: float("inf") for name in sides}
        for _ in range(repeats):
            for name, command in sides.items():  # alternate the sides
                best[name] = min(best[name], _time_shell(command))
        rate = {name: size / 1e6 / seconds for name, seconds in best.items()}
        note = (f"{size / 1e6:.0f} MB, {records} records, zstd -3 in and out; one process (dasd "
                f"filter checks in one thread per core by default, {os.cpu_count()} CPUs here)")
        rows = [
            {"metric": "dasd filter passthrough", "value": rate["passthrough"], "unit": "MB/s",
             "baseline": "zstd -dc | zstd", "baseline_value": rate["floor"],
             "ratio": rate["passthrough"] / rate["floor"], "goal": ">= 100 MB/s", "note": note},
            {"metric": "dasd filter, all non-model checks (defaults: truncated, structure, repetition)",
             "value": rate["all"], "unit": "MB/s", "baseline": "dasd filter passthrough",
             "baseline_value": rate["passthrough"], "ratio": rate["all"] / rate["passthrough"],
             "goal": "", "note": note},
        ]
        if before:
            rows.append({"metric": "dasd filter, default checks: this checkout vs the earlier one",
                         "value": rate["all"], "unit": "MB/s", "baseline": f"dasd filter from {before}",
                         "baseline_value": rate["before"], "ratio": rate["all"] / rate["before"],
                         "goal": ">= 60 MB/s", "note": note})
        rows.append(_repetition_row(corpus, repeats))
        rows.extend(_verify_rows(quick))
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _repetition_row(corpus: Path, repeats: int) -> dict:
    from dasd_cli.core.filters.repetition import RepetitionConfig, check_text

    with open(corpus, "rb") as fh:
        lines = zstandard.ZstdDecompressor().decompress(fh.read(), max_output_size=1 << 34).splitlines()
    lines = lines[:POOL]  # each distinct response once
    size = sum(len(line) for line in lines)
    config = RepetitionConfig()
    parse_s = check_s = float("inf")
    dropped = 0
    for _ in range(repeats):
        start = time.perf_counter()
        responses = [orjson.loads(line)["response"] for line in lines]
        parse_s = min(parse_s, time.perf_counter() - start)
        start = time.perf_counter()
        dropped = sum(check_text(text, config) is not None for text in responses)
        check_s = min(check_s, time.perf_counter() - start)
    return {"metric": "repetition check (core, in-process)", "value": size / 1e6 / check_s, "unit": "MB/s",
            "baseline": "orjson parse of the same lines", "baseline_value": size / 1e6 / parse_s,
            "ratio": parse_s / check_s, "goal": ">= 20 MB/s",
            "note": f"{len(lines)} responses, {size / 1e6:.0f} MB, {dropped} dropped "
                    f"({DEGENERATE_SHARE:.0%} of the pool generated degenerate)"}


def _math_case(i: int) -> tuple[str, str]:
    """(reference answer, boxed answer) for response i: equal and unequal forms, every
    string distinct (math-verify caches parses; repeats would flatter both sides)."""
    k = i // 6 + 2
    return ((f"\\frac{{{2 * k + 1}}}{{2}}", f"{k}.5"), (f"{k}", f"{k}"),
            (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"), (f"x^2 + {2 * k}x + {k * k}", f"(x+{k})^2"),
            (f"{k}", f"{k + 1}"), (f"({k}, {k + 1})", f"({k},{k + 1})"))[i % 6]


CODE_CASES = (  # (candidate code, MBPP-style tests): passing and failing
    ("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     "assert fib(10) == 55\nassert fib(1) == 1\n"),
    ("def rev(s):\n    return s[::-1]\n", "assert rev('abc') == 'cba'\n"),
    ("def square(x):\n    return x * 3\n", "assert square(4) == 16\n"),
)


def _verify_records(kind: str, n: int) -> list[dict]:
    records = []
    for i in range(n):
        if kind == "math":
            gold, given = _math_case(i)
            response = f"<think>\nWorking {i}.\n</think>\n\nSo the answer is $\\boxed{{{given}}}$."
            records.append({"id": f"m{i}", "response": response, "reference": {"answer": gold}})
        else:
            code, tests = CODE_CASES[i % len(CODE_CASES)]
            response = f"<think>\nWriting it.\n</think>\n\n```python\n{code}```\n"
            records.append({"id": f"c{i}", "response": response, "reference": {"tests": tests}})
    return records


def _verify_rows(quick: bool) -> list[dict]:
    from math_verify import parse, verify

    from dasd_cli.core.filters.verify import VerifyFilter
    from dasd_cli.core.verify.answers import extract_math_answer, quiet_math_verify
    from dasd_cli.pipeline.verification import compare_in_helper, run_program
    from dasd_cli.workers import default_workers, ordered_thread_map

    quiet_math_verify()
    workers = default_workers()
    rows = []
    for kind, n in (("math", 80 if quick else 400), ("code", 16 if quick else 80)):
        records = _verify_records(kind, n)
        verifier = VerifyFilter(run_program=run_program)
        verifier.check(records[0])  # imports and first-use costs out of the timing
        start = time.perf_counter()
        kept = sum(verifier.check(r) is None for r in records)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        if kind == "math":
            for r in records:
                verify(parse("$" + r["reference"]["answer"] + "$"),
                       parse("$" + extract_math_answer(r["response"]) + "$"))
            floor = "math-verify parse + verify, same answers"
        else:
            for _ in records:
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor = "python -c pass, once per response"
        base = time.perf_counter() - start
        rows.append({"metric": f"verified {kind} responses/s (in-process, 1 process, main thread)",
                     "value": n / ours, "unit": "responses/s", "baseline": floor,
                     "baseline_value": n / base, "ratio": base / ours, "goal": "",
                     "note": f"{n} responses, {kept} correct; one thread (dasd filter --workers 1)"})
        # What `dasd filter --verify` does by default: one thread per core, math compared in
        # a helper process per thread (their start-up is inside the timing).
        threaded = VerifyFilter(run_program=run_program, compare_math=compare_in_helper)
        start = time.perf_counter()
        kept_threads = sum(drop is None for _, drop in ordered_thread_map(threaded.check, records,
                                                                          workers=workers))
        every_core = time.perf_counter() - start
        rows.append({"metric": f"verified {kind} responses/s ({workers} threads, as dasd filter --verify)",
                     "value": n / every_core, "unit": "responses/s",
                     "baseline": "the same checks, 1 process, main thread", "baseline_value": n / ours,
                     "ratio": ours / every_core, "goal": "",
                     "note": f"{n} responses, {kept_threads} correct; {workers} cores, helper "
                             f"processes started inside the timing"})
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick="--quick" in sys.argv):
        print(row)
    os.sys.exit(0)
