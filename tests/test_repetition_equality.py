"""The repetition filter gives the same statistics and verdicts as the release that first
shipped it: values frozen in tests/data/repetition_expected.json, on a varied corpus built
here (long chains of thought with repeated lines, code blocks, loops, unicode, edge cases).

Regenerate the file only on purpose, when a statistic's definition changes:
    python tests/test_repetition_equality.py > tests/data/repetition_expected.json
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import pytest

from dasd_cli.core.filters.repetition import RepetitionConfig, check_text, repetition_stats
from helpers import repetition_configs

EXPECTED = Path(__file__).resolve().parent / "data" / "repetition_expected.json"
DEFAULT = RepetitionConfig()

WORDS = ("so", "the", "value", "of", "x", "is", "then", "we", "check", "wait", "let", "me", "sum",
         "term", "equals", "and", "therefore", "root", "Case", "CASE", "case", "n", "2", "12",
         "answer", "verify", "again", "θ", "数学", "答案", "naïve", "Ωmega", "😀", "π", "x²")
THOUGHTS = ("Wait, let me check that again.", "Hmm.", "So the answer is 12.", "Let me recompute.",
            "Okay.", "Alternatively, maybe I should factor it.", "Yes, that checks out.",
            "Hold on, is 7 prime? Yes.", "但是我们需要再检查一次。", "Donc la réponse est 12.")
CODE = '''```python
def solve(n):
    total = 0
    for i in range(n):
        if i % 3 == 0 or i % 5 == 0:
            total += i
    return total


print(solve(1000))
```'''


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).capitalize() + "."


def _cot(rng: random.Random, paragraphs: int) -> str:
    """A teacher-like trace: prose, short re-checks on lines of their own, code, math."""
    parts = []
    for _ in range(paragraphs):
        r = rng.random()
        if r < 0.15:
            parts.append(rng.choice(THOUGHTS))
        elif r < 0.22:
            parts.append(CODE.replace("1000", str(rng.randint(1, 10**6))))
        elif r < 0.3:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            parts.append(f"$$\n{a} \\times {b} = {a * b}\n$$")
        else:
            parts.append("\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
                                   for _ in range(rng.randint(1, 3))))
    answer = rng.randint(0, 999)
    return "<think>\n" + "\n\n".join(parts) + f"\n</think>\n\nThe answer is \\boxed{{{answer}}}."


@functools.lru_cache(maxsize=1)
def corpus() -> list[tuple[str, str]]:
    """(name, text) pairs; deterministic."""
    rng = random.Random(14)
    texts: list[tuple[str, str]] = [
        ("empty", ""), ("space", " "), ("newlines", "\n\n\n"), ("one_word", "word"),
        ("one_char", "x"), ("punctuation", " ,.;!? "), ("unicode_word", "数学"),
        ("emoji", "😀"), ("combining", "e\u0301" * 40), ("surrogate", "a \ud800 b " * 30),
        ("crlf", "line one\r\nline one\r\nline two\r\n" * 20), ("tabs", "\t\tx\t\n" * 50),
        ("case", "The CASE the case THE Case " * 30), ("digits", "0123456789" * 50),
        ("bang_run", "Done" + "!" * 500), ("zero_one", "bits " + "01" * 300),
        ("short_phrase", "wait " * 45), ("word_49", " ".join(f"w{i}" for i in range(49))),
        ("word_50", " ".join(f"w{i}" for i in range(50))),
        ("pasted_twice", " ".join(f"t{i}" for i in range(300)) * 2),
        ("unicode_loop", "答案是 " + "再检查一次，" * 200),
        ("mixed_scripts", " ".join(rng.choice(WORDS) for _ in range(3000))),
    ]
    for i in range(24):
        texts.append((f"cot_{i}", _cot(rng, rng.choice((3, 20, 80, 300)))))
    for i in range(12):  # degenerate endings and middles
        body = _cot(rng, rng.choice((20, 120)))
        head = body.split("\n</think>")[0]
        unit = rng.choice((_sentence(rng) + " ", rng.choice(THOUGHTS) + "\n", CODE + "\n\n",
                           "\n\n".join(_sentence(rng) for _ in range(3)) + "\n\n"))
        copies = rng.randint(2, 40)
        kind = i % 3
        if kind == 0:  # a loop to the end, cut mid-copy
            loop = unit * copies
            text = head + "\n\n" + loop[:len(loop) - rng.randint(0, len(unit) - 1)]
        elif kind == 1:  # a block pasted in the middle, then the trace recovers
            paragraphs = body.split("\n\n")
            cut = rng.randint(0, len(paragraphs))
            text = "\n\n".join(paragraphs[:cut] + [unit.strip()] * copies + paragraphs[cut:])
        else:  # repeated lines scattered through
            lines = body.split("\n")
            for _ in range(copies):
                lines.insert(rng.randint(0, len(lines)), unit.split("\n")[0])
            text = "\n".join(lines)
        texts.append((f"degenerate_{i}", text))
    for i in range(30):  # small vocabularies: many ties between equally frequent n-grams
        vocab = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        sep = rng.choice((" ", " ", "\n", ", ", "\n\n"))
        texts.append((f"small_vocab_{i}", sep.join(rng.choice(vocab) for _ in range(rng.randint(0, 400)))))
    return texts


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def compute() -> dict[str, dict]:
    out = {}
    for name, text in corpus():
        verdicts = {}
        for label, config in repetition_configs().items():
            drop = check_text(text, config)
            verdicts[label] = None if drop is None else [drop.reason, drop.detail]
        out[name] = {"sha": _digest(text), "stats": repetition_stats(text), "verdicts": verdicts}
    return out


@pytest.fixture(scope="module")
def expected() -> dict[str, dict]:
    return json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("name, text", corpus(), ids=[name for name, _ in corpus()])
def test_same_statistics_and_verdicts_as_frozen(name, text, expected):
    want = expected[name]
    assert _digest(text) == want["sha"], "the corpus changed, not the filter"
    assert repetition_stats(text) == want["stats"]
    for label, config in repetition_configs().items():
        drop = check_text(text, config)
        assert (None if drop is None else [drop.reason, drop.detail]) == want["verdicts"][label], label


def test_every_verdict_kind_is_exercised(expected):
    reasons = Counter(v["verdicts"][label][0] for v in expected.values() for label in repetition_configs()
                      if v["verdicts"][label] is not None)
    assert {"looping_tail", "repeated_lines", "repeated_paragraphs", "top_ngram",
            "duplicate_ngrams"} <= set(reasons), reasons
    assert sum(v["verdicts"]["default"] is None for v in expected.values()) >= 20


# ------------------------------------------------ the definitions, on exact word tuples

_WORD = re.compile(rb"[A-Za-z0-9\x80-\xff]+")


def reference_ngram_stats(text: str) -> dict[str, float]:
    """Gopher n-gram statistics by their definition: exact words, no hashing."""
    words = [w.lower() for w in _WORD.findall(text.encode("utf-8", "surrogatepass"))]
    lengths = [len(w) for w in words]
    total = float(sum(lengths)) or 1.0
    stats = {}
    for n in range(2, 11):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if n <= 4:
            counts = Counter(grams)
            best, first = 0, {}
            for i, g in enumerate(grams):
                first.setdefault(g, i)
            top = max(counts.values(), default=0)
            if top > 1:
                start = min(first[g] for g, c in counts.items() if c == top)
                best = top * sum(lengths[start:start + n])
                stats[f"top_{n}gram_fraction"] = min(1.0, float(best) / total)
            else:
                stats[f"top_{n}gram_fraction"] = 0.0
        else:
            seen, covered = set(), [False] * len(words)
            for i, g in enumerate(grams):
                if g in seen:
                    covered[i:i + n] = [True] * n
                seen.add(g)
            stats[f"duplicate_{n}gram_fraction"] = float(sum(length for length, c in zip(lengths, covered) if c)) / total
    return stats


def reference_duplicate_units(text: str, paragraphs: bool) -> tuple[float, float]:
    """Duplicate line (paragraph) fractions by their definition, on Python strings."""
    parts = re.split(r"\n[ \t]*\n+", text) if paragraphs else text.split("\n")
    units = [u for u in (p.strip() for p in parts) if u]
    total = sum(map(len, units))
    if not units or not total:
        return 0.0, 0.0
    first = dict.fromkeys(units)
    return (len(units) - len(first)) / len(units), (total - sum(map(len, first))) / total


SPACES = [chr(c) for c in range(0x3001) if chr(c).isspace()] + ["\u200b", "\ufeff", "\xa1", "\u3001"]


@pytest.mark.parametrize("seed", range(60))
def test_duplicate_lines_and_paragraphs_match_their_definition(seed):
    from dasd_cli.core.filters.repetition import _duplicate_fractions

    rng = random.Random(seed)
    pieces = ["a", "b", "数学", "\ud800", "x²", "\n", "\n\n", "\n \t\n", "\r\n", " ", "\t"] + SPACES
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 8))]
    text = "".join(rng.choice(lines) for _ in range(rng.randint(0, 60)))
    data = text.encode("utf-8", "surrogatepass")
    want = [*reference_duplicate_units(text, False), *reference_duplicate_units(text, True)]
    assert _duplicate_fractions(data, True) == want, text
    assert _duplicate_fractions(data, False) == want[:2], text


@pytest.mark.parametrize("seed", range(10))
def test_duplicate_units_alike_at_both_ends_match_their_definition(seed):
    """Long units that differ only in the middle (table rows, numbered steps) share the
    cheap hash (length, first and last 8 bytes); all but one of them, and their copies,
    are then grouped by a hash of every byte."""
    from dasd_cli.core.filters.repetition import _duplicate_fractions

    rng = random.Random(seed)
    middles = ["".join(rng.choice("0123456789数²") for _ in range(rng.randint(0, 21))) for _ in range(300)]
    lines = [f"| step value is {m} so far |" for m in middles]
    text = "\n".join(rng.choice(lines) for _ in range(600)) + "\n\n" + "\n\n".join(lines[:50] * 2)
    data = text.encode("utf-8")
    want = [*reference_duplicate_units(text, False), *reference_duplicate_units(text, True)]
    assert _duplicate_fractions(data, True) == want


def reference_word_loop(tail: list[int], min_repeats: float, min_words: int) -> tuple[int, int]:
    """(span, period) by the definition: the smallest period whose run back from the end
    repeats the final 3 words, spans min_words and holds min_repeats copies."""
    n = len(tail)
    for period in range(1, n):
        same = 0
        while same < n - period and tail[n - 1 - same] == tail[n - 1 - same - period]:
            same += 1
        span = period + same
        if same >= 3 and span >= min_words and span / period >= min_repeats:
            return span, period
    return 0, 0


@pytest.mark.parametrize("seed", range(60))
def test_word_loop_matches_its_definition(seed):
    import numpy as np

    from dasd_cli.core.filters.ngrams import word_loop

    rng = random.Random(seed)
    alphabet = rng.randint(1, 4)  # few distinct words: the final 3 recur everywhere
    unit = [rng.randrange(alphabet) for _ in range(rng.randint(1, 120))]
    tail = [rng.randrange(alphabet) for _ in range(rng.randint(0, 200))] + unit * rng.randint(1, 8)
    tail = tail[:len(tail) - rng.randint(0, len(unit) - 1)] if rng.random() < 0.5 else tail
    repeats, words = rng.choice([4.0, 2.5, 1.5]), rng.choice([3, 12, 40])
    assert word_loop(np.array(tail, dtype=np.uint64), repeats, words) == reference_word_loop(tail, repeats, words)


def reference_byte_loop(data: bytes, tail_bytes: int, min_bytes: int, min_repeats: float):
    """The byte loop by its definition: the first period 1..32, shorter than the tail,
    whose run back from the end (within the tail) spans min_bytes and min_repeats copies."""
    tail = data[-tail_bytes:]
    if len(data) < min_bytes:
        return 0, 0
    for period in range(1, 33):
        if len(tail) <= period:
            break
        same = 0
        while same + period < len(tail) and tail[-1 - same] == tail[-1 - same - period]:
            same += 1
        span = same + period
        if span >= min_bytes and span / period >= min_repeats:
            return span, period
    return 0, 0


@pytest.mark.parametrize("seed", range(60))
def test_byte_loop_matches_its_definition(seed):
    import numpy as np

    from dasd_cli.core.filters.ngrams import byte_loop

    rng = random.Random(seed)
    alphabet = b"ab!0"[:rng.randint(1, 4)]
    unit = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
    data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) + unit * rng.randint(1, 60)
    data = data[:len(data) - rng.randint(0, len(unit) - 1)] if rng.random() < 0.5 else data
    tail_bytes, min_bytes = rng.choice([64, 1024]), rng.choice([0, 5, 20, 128])
    repeats = rng.choice([4.0, 2.5, 1.0])
    found = byte_loop(np.frombuffer(data, dtype=np.uint8), tail_bytes, min_bytes, repeats)
    assert found == reference_byte_loop(data, tail_bytes, min_bytes, repeats), (data, tail_bytes, min_bytes)


def test_a_loop_whose_span_holds_its_final_words_many_times_is_found():
    """The final 3 words occur 100 times inside each 500-word copy: a search over the
    nearest occurrences only (64 of them) would not reach the period."""
    span = " ".join(f"x{i} and so we get" for i in range(100))
    body = " ".join(_sentence(random.Random(3)) for _ in range(20))
    drop = check_text(body + " " + " ".join([span] * 5), DEFAULT)
    assert drop is not None and drop.reason == "looping_tail", drop
    assert "500-word span" in drop.detail, drop.detail


@pytest.mark.parametrize("seed", range(40))
def test_ngram_statistics_match_their_definition(seed):
    rng = random.Random(seed)
    vocab = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
    text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 300)))
    if seed % 4 == 0:  # a repeated block in the middle
        block = " ".join(f"v{i}" for i in range(rng.randint(5, 30)))
        text = text + (" " + block) * rng.randint(2, 5) + " " + text[::-1]
    stats = repetition_stats(text)
    assert {k: stats[k] for k in reference_ngram_stats(text)} == reference_ngram_stats(text)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(compute(), indent=1, sort_keys=True))


# ------------------------------------------------ the verdict is the full statistics' verdict

def verdict_from_all_statistics(text: str, config: RepetitionConfig):
    """check_text's contract, computed the long way: every statistic, then _REASONS order."""
    from dasd_cli.core.filters.repetition import _REASONS, looping_tail, word_hashes

    data = text.encode("utf-8", "surrogatepass")
    loop = looping_tail(data, word_hashes(data)[0], config)
    if loop is not None:
        return ["looping_tail", loop]
    stats = repetition_stats(text)
    for stat, limit_name, reason in _REASONS:
        if stat.startswith("duplicate_paragraph") and "\n\n" not in text:
            continue
        if ("gram" in stat) and stats["words"] < config.min_words:
            continue
        limit = getattr(config, limit_name)
        if stats[stat] > limit:
            return [reason, f"{stat} {stats[stat]:.3f} > {limit}"]
    return None


@pytest.mark.parametrize("seed", range(200))
def test_check_text_stops_early_without_changing_the_verdict(seed):
    rng = random.Random(seed)
    name, text = rng.choice(corpus())
    limits = {f.name: rng.choice((0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9, 1.0))
              for f in fields(RepetitionConfig) if f.name.startswith("max_")}
    if seed % 2:  # only the duplicate n-gram limits decide: the early stop is what is tested
        limits.update({k: 1.0 for k in limits if not (k.startswith("max_duplicate_") and k.endswith("gram_fraction"))})
    config = replace(DEFAULT, min_words=rng.choice((0, 5, 50)), **limits)
    drop = check_text(text, config)
    assert (None if drop is None else [drop.reason, drop.detail]) == verdict_from_all_statistics(text, config), name


def test_duplicate_fractions_never_grow_with_n():
    """What the early stop relies on: repeated (n+1)-grams cover a subset of repeated n-grams."""
    for name, text in corpus():
        stats = repetition_stats(text)
        values = [stats[f"duplicate_{n}gram_fraction"] for n in range(5, 11)]
        assert values == sorted(values, reverse=True), name


def test_grouping_counts_each_hash_and_marks_its_first_occurrence():
    import numpy as np

    from dasd_cli.core.filters.ngrams import _group

    rng = np.random.default_rng(0)
    for size in (0, 1, 5, 100, 5000):
        values = rng.integers(0, 2**63, max(1, size // 3), dtype=np.int64).astype(np.uint64)
        if values.size > 2:  # hashes equal in their low bits share a hash-table slot
            values[1] = values[0] ^ np.uint64(1 << 40)
            values[2] = values[0] ^ np.uint64(1 << 63)
        keys = values[rng.integers(0, values.size, size)]
        sizes, first = _group(keys)
        seen = set()
        for key, got_size, got_first in zip(keys.tolist(), sizes.tolist(), first.tolist()):
            assert got_size == keys.tolist().count(key)
            assert got_first == (key not in seen)
            seen.add(key)
