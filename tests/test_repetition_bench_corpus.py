"""The repetition filter gives the verdicts and statistics of the vectorized (numpy) version
it replaced on the benchmark's corpus: bench/bench_filter.py's 1200 distinct long
chain-of-thought responses (5-50 KB, 5% degenerate), frozen from that version in
tests/data/repetition_bench_expected.json (the default verdict in full; the strict verdict
and every statistic as digests, per response).

Regenerate only on purpose, when a statistic's definition changes:
    PYTHONPATH=src python tests/test_repetition_bench_corpus.py > tests/data/repetition_bench_expected.json
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dasd_cli.core.filters.repetition import check_text, repetition_stats
from helpers import repetition_configs


ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "data" / "repetition_bench_expected.json"


@functools.lru_cache(maxsize=1)
def pool() -> tuple[str, ...]:
    """The bench corpus's distinct responses, built by the bench's own code."""
    bench = str(ROOT / "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location("bench_filter", ROOT / "bench" / "bench_filter.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    return tuple(module.response_pool())


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _verdict(text: str, label: str):
    drop = check_text(text, repetition_configs()[label])
    return None if drop is None else [drop.reason, drop.detail]


def compute() -> dict:
    texts = pool()
    return {"texts": _digest(texts),
            "default": [_verdict(t, "default") for t in texts],
            "strict": [_digest(_verdict(t, "strict")) for t in texts],
            "stats": [_digest(repetition_stats(t)) for t in texts]}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def test_the_corpus_is_the_frozen_one(expected):
    assert _digest(pool()) == expected["texts"], "the bench corpus changed, not the filter"


def test_same_verdicts_as_the_numpy_version(expected):
    texts = pool()
    for label in repetition_configs():
        got = [_verdict(t, label) for t in texts]
        if label != "default":
            got = [_digest(v) for v in got]
        wrong = [i for i, (a, b) in enumerate(zip(got, expected[label])) if a != b]
        assert not wrong, f"{label}: {len(wrong)} verdicts differ, e.g. response {wrong[0]}: " \
                          f"{got[wrong[0]]} != {expected[label][wrong[0]]}"
    assert sum(v is not None for v in expected["default"]) >= 30  # the degenerate share


def test_same_statistics_as_the_numpy_version(expected):
    got = [_digest(repetition_stats(t)) for t in pool()]
    wrong = [i for i, (a, b) in enumerate(zip(got, expected["stats"])) if a != b]
    assert not wrong, f"{len(wrong)} responses' statistics differ, e.g. response {wrong[0]}"


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(compute(), indent=0))
