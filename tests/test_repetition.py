"""The repetition filter: statistics, reason codes, and the calibration on synthetic long CoT."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from dasd_cli.core.filters.repetition import (RepetitionConfig, RepetitionFilter, check_text,
                                              repetition_stats, word_hashes)
from dasd_cli.errors import RecordError

CONFIG = RepetitionConfig()


def _synthetic():
    path = Path(__file__).resolve().parents[1] / "bench" / "synthetic_cot.py"
    spec = importlib.util.spec_from_file_location("synthetic_cot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(rng: random.Random, words: int) -> str:
    vocab = [f"w{i}" for i in range(5000)]
    return " ".join(rng.choice(vocab) for _ in range(words))


def test_word_hashes_ignore_case_and_punctuation():
    hashes, lengths = word_hashes(b"Hello, world! HELLO world")
    assert hashes[0] == hashes[2] and hashes[1] == hashes[3] and hashes[0] != hashes[1]
    assert lengths.tolist() == [5, 5, 5, 5]
    assert word_hashes(b"").__len__() == 2 and word_hashes(b" ,. ")[0].size == 0


def test_text_pasted_twice_has_half_its_characters_in_duplicate_ngrams():
    text = _prose(random.Random(0), 400)
    stats = repetition_stats(text + " " + text)
    for n in range(5, 11):
        assert stats[f"duplicate_{n}gram_fraction"] == pytest.approx(0.5)
    assert repetition_stats(text)["duplicate_5gram_fraction"] == 0.0


def test_top_ngram_fraction_counts_the_most_frequent_ngram():
    text = "alpha beta " * 30 + _prose(random.Random(1), 200)
    stats = repetition_stats(text)
    alpha_beta = 30 * 9  # characters of "alpha beta" x 30
    total = alpha_beta + sum(len(w) for w in text.split()[60:])
    assert stats["top_2gram_fraction"] == pytest.approx(alpha_beta / total)


def test_clean_prose_is_kept():
    assert check_text(_prose(random.Random(2), 3000), CONFIG) is None


@pytest.mark.parametrize("text, reason", [
    ("\n".join(["The same line again."] * 6 + [f"line {i} is new" for i in range(8)]), "repeated_lines"),
    ("\n\n".join(["A paragraph that says one thing.\nIt has two lines."] * 5
                 + [f"Paragraph {i} differs." for i in range(6)]), "repeated_paragraphs"),
    ("the cat " * 60 + _prose(random.Random(3), 300), "top_ngram"),
    (" ".join([_prose(random.Random(4), 150)] * 3) + " " + _prose(random.Random(5), 100), "duplicate_ngrams"),
])
def test_each_statistic_has_its_reason_code(text, reason):
    drop = check_text(text, CONFIG)
    assert drop is not None and drop.reason == reason, drop


def test_looping_tail_in_words_even_when_cut_mid_word():
    body = _prose(random.Random(6), 500)
    loop = "So we need to check the remaining case again. " * 12
    for cut in (0, 3, 17):
        drop = check_text(body + " " + loop[:len(loop) - cut], CONFIG)
        assert drop is not None and drop.reason == "looping_tail", (cut, drop)
        assert "9-word span" in drop.detail


def test_looping_tail_inside_one_word():
    drop = check_text(_prose(random.Random(7), 300) + " " + "ab" * 200, CONFIG)
    assert drop.reason == "looping_tail" and "2-byte span" in drop.detail


def test_short_repeats_at_the_end_are_not_a_loop():
    text = _prose(random.Random(8), 300) + " Wait, wait, wait. Let me check. Let me check."
    assert check_text(text, CONFIG) is None


def test_thresholds_are_configurable():
    text = "\n".join(["Hmm."] * 3 + [f"fresh line {i}" for i in range(7)])  # 2 of 10 repeat
    assert check_text(text, CONFIG) is None
    strict = replace(CONFIG, max_duplicate_line_fraction=0.1)
    assert check_text(text, strict).reason == "repeated_lines"
    looser = replace(CONFIG, loop_min_repeats=100.0)
    looping = _prose(random.Random(9), 200) + " " + "and again " * 40
    assert check_text(looping, CONFIG).reason == "looping_tail"
    relaxed = check_text(looping, looser)
    assert relaxed is None or relaxed.reason != "looping_tail"


def test_filter_reads_the_response_and_needs_one():
    flt = RepetitionFilter()
    assert flt.name == "repetition"
    assert flt.check({"response": _prose(random.Random(10), 100)}) is None
    with pytest.raises(RecordError) as err:
        flt.check({"id": "x"})
    assert err.value.reason == "missing_field"


def test_unicode_and_empty_text():
    assert check_text("", CONFIG) is None
    assert check_text("数学 " * 5 + "é" * 3, CONFIG) is None
    assert check_text("x" + "数" * 200, CONFIG).reason == "looping_tail"


def test_calibration_on_synthetic_long_cot():
    """The numbers quoted in dasd-filter(1): clean traces kept, degenerate ones dropped."""
    synthetic = _synthetic()
    rng = random.Random(2026)
    clean = [synthetic.clean_response(rng, rng.choice((500, 2000, 6000))) for _ in range(60)]
    kept = sum(check_text(t, CONFIG) is None for t in clean)
    assert kept == len(clean)
    for kind in synthetic.DEGENERATE_KINDS:
        reasons = Counter((check_text(synthetic.degenerate_response(rng, kind, 2000), CONFIG)
                           or type("K", (), {"reason": "kept"})).reason for _ in range(20))
        minimum = 14 if kind == "pasted_paragraphs" else 20  # a short paste can hide in a long trace
        assert 20 - reasons["kept"] >= minimum, (kind, reasons)


def test_stats_are_plain_floats():
    stats = repetition_stats(_prose(random.Random(11), 100))
    assert all(type(v) is float for v in stats.values())  # JSON-ready for --stats and details
