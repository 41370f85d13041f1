"""Repetition: Gopher-style statistics and a looping-tail detector, on the response text.

Statistics (Rae et al. 2021, "Gopher", appendix A), over the whole response (thinking
and answer together: a loop is a defect wherever it is):

- duplicate lines / paragraphs: the fraction of non-empty lines (paragraphs) that repeat
  an earlier one, by count and by characters;
- top n-gram (n = 2, 3, 4): characters covered by the most frequent word n-gram, as a
  fraction of all word characters;
- duplicate n-grams (n = 5..10): characters of words inside a REPEATED occurrence of an
  n-gram (the first occurrence is not counted; a text pasted twice scores 0.5);
- looping tail: the response ends in one span repeated back to back (the classic
  degenerate ending, often cut mid-copy), in words or, for runs like "!!!!", in bytes.

Speed: one compiled pass (numba, :mod:`ngrams`) hashes the words of the UTF-8 bytes, with
no per-word Python objects; n-gram hashes are combined from word hashes and grouped in a
hash table, and each n only groups the positions whose (n-1)-gram was already duplicated
(an n-gram can only repeat where its prefix does). The filter (``check_text``) stops at
its verdict: the top 3- and 4-gram fractions are skipped when a bound from the 2-grams
keeps them under their limits, and the duplicate fractions stop once one is under every
remaining limit (they never grow with n). Words are maximal runs of ASCII letters/digits
or non-ASCII bytes, lower-cased; "characters" are UTF-8 bytes for n-grams and code
points for lines and paragraphs (:mod:`units`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from dasd_cli.core.chat import response_text
from dasd_cli.core.filters import ngrams
from dasd_cli.core.filters.base import Drop
from dasd_cli.core.filters.units import duplicate_units

TAIL_WORDS = 4096  # the looping-tail search looks at this many final words
TAIL_BYTES = 1024  # and this many final bytes for loops inside a "word"


@dataclass(frozen=True)
class RepetitionConfig:
    """Thresholds: a response is dropped when any statistic goes ABOVE its maximum.

    Defaults are calibrated on long chain-of-thought text (see dasd-filter(1)); Gopher's
    web-text values (0.30/0.20/0.30/0.20, top 0.20/0.18/0.16, duplicate 0.15..0.10) drop
    most long CoT, which re-reads and re-checks by design.
    """

    max_duplicate_line_fraction: float = 0.30  # of non-empty lines repeating an earlier line
    max_duplicate_line_char_fraction: float = 0.15  # same, weighted by characters
    max_duplicate_paragraph_fraction: float = 0.30  # of paragraphs repeating an earlier one
    max_duplicate_paragraph_char_fraction: float = 0.15
    max_top_2gram_fraction: float = 0.20  # characters in the most frequent 2-gram
    max_top_3gram_fraction: float = 0.18
    max_top_4gram_fraction: float = 0.16
    max_duplicate_5gram_fraction: float = 0.50  # characters in repeated 5-gram occurrences
    max_duplicate_6gram_fraction: float = 0.45
    max_duplicate_7gram_fraction: float = 0.40
    max_duplicate_8gram_fraction: float = 0.35
    max_duplicate_9gram_fraction: float = 0.32
    max_duplicate_10gram_fraction: float = 0.30
    min_words: int = 50  # n-gram statistics only for responses with at least this many words
    loop_min_repeats: float = 4.0  # looping tail: copies of the span at the end (may be partial)
    loop_min_words: int = 40  # looping tail: words covered by the loop
    loop_min_bytes: int = 128  # looping tail inside one word ("!!!!...", "0101..."): bytes

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 1 if f.name == "loop_min_repeats" else 0  # a loop is at least one copy
            if not value >= least:  # NaN too
                raise ValueError(f"{f.name} must be at least {least}, not {value}")


# --------------------------------------------------------------------------- hashing

def word_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hash, byte length) of each word of UTF-8 ``data``, case-insensitive."""
    return ngrams.word_hashes(np.frombuffer(data, dtype=np.uint8), ngrams.LOWER, ngrams.IS_WORD)


# --------------------------------------------------------------------------- statistics

def _duplicate_fractions(data: bytes, paragraphs: bool) -> list[float]:
    """Duplicate line fractions (by count, by characters), then, with ``paragraphs``, the
    paragraph ones: of the non-empty lines (paragraphs) repeating an earlier one."""
    counts = duplicate_units(np.frombuffer(data, dtype=np.uint8), paragraphs).tolist()
    fractions = []
    for units, dup, chars, dup_chars in (counts[:4], counts[4:]) if paragraphs else (counts[:4],):
        fractions += [0.0, 0.0] if not units or not chars else [dup / units, dup_chars / chars]
    return fractions


_NO_LIMITS = np.ones(ngrams.N_STATS)


def ngram_stats(hashes: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    """Top 2-4-gram and duplicate 5-10-gram character fractions of a word sequence."""
    values = ngrams.ngram_stats(hashes, lengths, -1.0, _NO_LIMITS, False)
    return {_stat_name(n): float(values[n - 2]) for n in range(2, 11)}


def _stat_name(n: int) -> str:
    return f"top_{n}gram_fraction" if n <= 4 else f"duplicate_{n}gram_fraction"


def looping_tail(data: bytes, hashes: np.ndarray, config: RepetitionConfig) -> str | None:
    """A description of the loop the text ends in, or None.

    A generation cut by the token limit usually ends inside a word, so the search also
    runs without the final word.
    """
    found = _word_loop(hashes[-TAIL_WORDS:], config)
    if found is None and hashes.size > 3:
        found = _word_loop(hashes[-TAIL_WORDS - 1:-1], config)
    return found if found is not None else _byte_loop(data, config)


def _word_loop(tail: np.ndarray, config: RepetitionConfig) -> str | None:
    span, period = ngrams.word_loop(tail, float(config.loop_min_repeats), int(config.loop_min_words))
    if period:
        return f"last {span} words repeat a {period}-word span {span / period:.1f} times"
    return None


def _byte_loop(data: bytes, config: RepetitionConfig) -> str | None:
    span, period = ngrams.byte_loop(np.frombuffer(data, dtype=np.uint8), TAIL_BYTES,
                                    int(config.loop_min_bytes), float(config.loop_min_repeats))
    if period:
        return f"last {span} bytes repeat a {period}-byte span {span / period:.0f} times"
    return None


def repetition_stats(text: str) -> dict[str, float]:
    """Every statistic of ``text`` (for calibration and ``--rejects`` details)."""
    data = text.encode("utf-8", "surrogatepass")
    hashes, lengths = word_hashes(data)
    stats: dict[str, float] = {"words": float(hashes.size)}
    (stats["duplicate_line_fraction"], stats["duplicate_line_char_fraction"],
     stats["duplicate_paragraph_fraction"], stats["duplicate_paragraph_char_fraction"]) = \
        _duplicate_fractions(data, True)
    stats.update(ngram_stats(hashes, lengths))
    return stats


# --------------------------------------------------------------------------- the filter

_REASONS = (  # (statistic, config field, reason code), in the order they are checked
    # A repeated paragraph repeats its lines too: name the larger unit first.
    ("duplicate_paragraph_fraction", "max_duplicate_paragraph_fraction", "repeated_paragraphs"),
    ("duplicate_paragraph_char_fraction", "max_duplicate_paragraph_char_fraction", "repeated_paragraphs"),
    ("duplicate_line_fraction", "max_duplicate_line_fraction", "repeated_lines"),
    ("duplicate_line_char_fraction", "max_duplicate_line_char_fraction", "repeated_lines"),
    *((f"top_{n}gram_fraction", f"max_top_{n}gram_fraction", "top_ngram") for n in (2, 3, 4)),
    *((f"duplicate_{n}gram_fraction", f"max_duplicate_{n}gram_fraction", "duplicate_ngrams")
      for n in range(5, 11)),
)


def check_text(text: str, config: RepetitionConfig) -> Drop | None:
    """The first repetition defect of ``text``, or None.

    The verdict is that of checking every statistic in ``_REASONS`` order, but it stops
    at the first one over its limit and computes the n-gram statistics only as far as
    they can still decide: the characters inside repeated (n+1)-grams are among those
    inside repeated n-grams, so once a duplicate fraction is at most every remaining
    limit, no larger n can exceed its own.
    """
    data = text.encode("utf-8", "surrogatepass")
    hashes, lengths = word_hashes(data)
    loop = looping_tail(data, hashes, config)
    if loop is not None:
        return Drop("looping_tail", loop)
    paragraphs = b"\n\n" in data  # else one paragraph: no duplicate
    values = _duplicate_fractions(data, paragraphs)
    values = values[2:] + values[:2]  # paragraphs first
    for (stat, limit_name, reason), value in zip(_REASONS[:4] if paragraphs else _REASONS[2:4], values):
        limit = getattr(config, limit_name)
        if value > limit:
            return Drop(reason, f"{stat} {value:.3f} > {limit}")
    if hashes.size < config.min_words:
        return None
    checks = _REASONS[4:]
    limits = [getattr(config, limit_name) for _, limit_name, _ in checks]
    top_limit = min(config.max_top_3gram_fraction, config.max_top_4gram_fraction)
    values = ngrams.ngram_stats(hashes, lengths, float(top_limit),
                                np.array(limits, dtype=np.float64), True)
    for i, (stat, _, reason) in enumerate(checks):
        value = float(values[i])
        if value != value:  # NaN: bounded below its limit, or not needed for the verdict
            continue
        if value > limits[i]:
            return Drop(reason, f"{stat} {value:.3f} > {limits[i]}")
        if reason == "duplicate_ngrams" and value <= min(limits[i:]):
            return None
    return None


class RepetitionFilter:
    """Drop responses with repeated lines, paragraphs, n-grams, or a looping ending.

    Reason codes: looping_tail, repeated_lines, repeated_paragraphs, top_ngram,
    duplicate_ngrams.
    """

    name = "repetition"

    def __init__(self, config: RepetitionConfig = RepetitionConfig()) -> None:
        self.config = config

    def check(self, record: dict[str, Any]) -> Drop | None:
        return check_text(response_text(record), self.config)


def config_fields() -> list[str]:
    """The threshold names, for building command-line flags from the dataclass."""
    return [f.name for f in fields(RepetitionConfig)]
