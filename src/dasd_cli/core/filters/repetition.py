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

Speed: words are hashed with vectorized polynomial hashing over the UTF-8 bytes (numpy,
no per-word Python objects), n-gram hashes are combined from word hashes, and each n only
sorts the positions whose (n-1)-gram was already duplicated (an n-gram can only repeat
where its prefix does), so one full sort per response. The filter (``check_text``) stops
at its verdict: the top 3- and 4-gram fractions are skipped when a bound from the 2-grams
keeps them under their limits, and the duplicate fractions stop once one is under every
remaining limit (they never grow with n). Words are maximal runs of ASCII letters/digits
or non-ASCII bytes, lower-cased; "characters" are UTF-8 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from dasd_cli.core.chat import response_text
from dasd_cli.core.filters.base import Drop
from dasd_cli.core.sorting import stable_argsort

_MASK = (1 << 64) - 1
_P = 0x100000001B3  # FNV prime: odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_Q = 0x9E3779B97F4A7C15  # n-gram combining multiplier (odd)
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n+")
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


# --------------------------------------------------------------------------- hashing

_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[ord("A"):ord("Z") + 1] += 32
_LOWER += 1  # no byte hashes to 0
_WORD = np.zeros(256, dtype=bool)
for _lo, _hi in ((ord("a"), ord("z")), (ord("A"), ord("Z")), (ord("0"), ord("9")), (128, 255)):
    _WORD[_lo:_hi + 1] = True
_pow = np.ones(1, dtype=np.uint64)
_pow_inv = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i modulo 2**64 for i < n (cached, grown by doubling)."""
    global _pow, _pow_inv
    if len(_pow) < n:
        size = max(n, 2 * len(_pow))
        with np.errstate(over="ignore"):
            _pow = np.concatenate(([np.uint64(1)], np.cumprod(np.full(size - 1, _P, dtype=np.uint64))))
            _pow_inv = np.concatenate(([np.uint64(1)], np.cumprod(np.full(size - 1, _P_INV, dtype=np.uint64))))
    return _pow[:n], _pow_inv[:n]


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def word_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hash, byte length) of each word of UTF-8 ``data``, case-insensitive."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    is_word = np.zeros(arr.size + 2, dtype=bool)
    is_word[1:-1] = _WORD[arr]
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # word starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    if starts.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    pw, pw_inv = _powers(arr.size)
    with np.errstate(over="ignore"):
        prefix = np.empty(arr.size + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(_LOWER[arr] * pw, out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * pw_inv[starts]
    return _mix(hashes), (ends - starts).astype(np.int64)


# --------------------------------------------------------------------------- statistics

def _duplicate_units(units: list[str]) -> tuple[float, float]:
    """(fraction by count, fraction by characters) of units repeating an earlier unit."""
    total_chars = sum(map(len, units))
    if not units or not total_chars:
        return 0.0, 0.0
    first = dict.fromkeys(units)  # the first occurrence of each unit, in C
    dup = len(units) - len(first)
    dup_chars = total_chars - sum(map(len, first))
    return dup / len(units), dup_chars / total_chars


def _nonempty_lines(text: str) -> list[str]:
    return list(filter(None, map(str.strip, text.split("\n"))))


def _paragraphs(text: str) -> list[str]:
    return list(filter(None, map(str.strip, _PARAGRAPH_SPLIT.split(text))))


_RADIX_MIN = 4096  # below this a comparison sort of the hashes is as fast


def _group_order(hashes: np.ndarray) -> np.ndarray:
    """A stable order that makes equal hashes contiguous (groups in any order).

    Long inputs are sorted by their low 32 bits with :func:`stable_argsort` (two 16-bit
    radix passes), ~2-5x faster than a stable sort of 64-bit keys; if two different
    hashes share their low 32 bits and so could interleave, the full sort.
    """
    if hashes.size < _RADIX_MIN:
        return np.argsort(hashes, kind="stable")
    order = stable_argsort(hashes & np.uint64(0xFFFFFFFF))
    sorted_h = hashes[order]
    low = sorted_h & np.uint64(0xFFFFFFFF)
    if ((low[1:] == low[:-1]) & (sorted_h[1:] != sorted_h[:-1])).any():
        return np.argsort(hashes, kind="stable")
    return order


def _groups(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group equal n-gram hashes: (order, first, sizes, in_dup).

    ``order`` sorts the hashes stably (the first of a group is its earliest position);
    ``first`` marks, in sorted order, each group's first member; ``sizes`` is the size of
    each group, in sorted order of groups; ``in_dup`` marks, in the original order, the
    hashes whose group has at least two members.
    """
    order = _group_order(hashes)
    sorted_h = hashes[order]
    first = np.empty(sorted_h.size, dtype=bool)
    first[:1] = True
    np.not_equal(sorted_h[1:], sorted_h[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    sizes = np.empty_like(starts)
    sizes[:-1] = starts[1:] - starts[:-1]
    sizes[-1:] = sorted_h.size - starts[-1:]
    in_dup = np.empty_like(first)
    in_dup[order] = np.repeat(sizes > 1, sizes)
    return order, first, sizes, in_dup


def _iter_ngram_stats(hashes: np.ndarray, lengths: np.ndarray, top_limit: float | None = None):
    """(name, value) of the top 2-4-gram and duplicate 5-10-gram fractions, in that order.

    Lazy: a caller that has decided may stop, and the larger n are never computed.

    With ``top_limit``, the top 3- and 4-gram fractions are only computed when they could
    exceed it; otherwise their value is None. An n-gram (n = 3, 4) occurring c times
    covers c * chars(ab) + c * chars(cd) characters or less, where ab and cd are two of
    its 2-grams (abc: ab and bc), each occurring at least c times: so twice the largest
    (occurrences x characters) of a 2-gram bounds both. The 5-gram candidates then come
    straight from the 2-grams: a 5-gram repeats only where its four 2-grams all do.
    """
    n_words = hashes.size
    total = float(lengths.sum()) or 1.0
    cum_len = np.concatenate(([0], np.cumsum(lengths)))
    gram = hashes
    candidates = np.arange(n_words)  # n-gram start positions that may still repeat
    n = 2
    while n <= 10:
        count = n_words - n + 1
        if count > 0:
            with np.errstate(over="ignore"):
                gram = gram[:count] * np.uint64(_Q) + hashes[n - 1:]
            if candidates.size and candidates[-1] >= count:
                candidates = candidates[candidates < count]
        if count <= 0 or candidates.size == 0:
            for k in range(n, 11):
                yield _stat_name(k), 0.0
            return
        order, first, sizes, in_dup = _groups(gram[candidates])
        if n <= 4:
            top = int(sizes.max())
            firsts = candidates[order[first]]  # each n-gram's first position
            if top > 1:
                # the most frequent n-gram; among equally frequent ones, the earliest
                start = int(firsts[sizes == top].min())
                yield _stat_name(n), min(1.0, float(top * (cum_len[start + n] - cum_len[start])) / total)
            else:
                yield _stat_name(n), 0.0
            if n == 2 and top_limit is not None and n_words >= 5:
                heaviest = int((sizes * (cum_len[firsts + 2] - cum_len[firsts])).max())
                if 2 * heaviest / total <= top_limit:
                    yield _stat_name(3), None
                    yield _stat_name(4), None
                    with np.errstate(over="ignore"):
                        for k in (3, 4):
                            gram = gram[:n_words - k + 1] * np.uint64(_Q) + hashes[k - 1:]
                    c = n_words - 4
                    candidates = np.flatnonzero(in_dup[:c] & in_dup[1:c + 1] & in_dup[2:c + 2]
                                                & in_dup[3:c + 3])
                    n = 5  # gram holds the 4-gram hashes: the loop extends them to 5-grams
                    continue
        else:
            starts = candidates[order[~first]]  # repeated occurrences (not the first)
            cover = np.zeros(n_words + 1, dtype=np.int32)  # +1 at a start, -1 n words later
            cover[starts] += 1  # positions are unique, so plain fancy indexing adds once each
            cover[starts + n] -= 1
            covered = np.cumsum(cover[:-1]) > 0
            yield _stat_name(n), float(lengths[covered].sum()) / total
        candidates = candidates[in_dup]
        n += 1


def ngram_stats(hashes: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    """Top 2-4-gram and duplicate 5-10-gram character fractions of a word sequence."""
    return dict(_iter_ngram_stats(hashes, lengths))


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
    n = tail.size
    if n >= 3:
        with np.errstate(over="ignore"):
            tri = tail[:-2] * np.uint64((_Q * _Q) & _MASK) + tail[1:-1] * np.uint64(_Q) + tail[2:]
        last = tri.size - 1
        earlier = np.flatnonzero(tri[:-1] == tri[last])  # where the final 3 words occurred
        for period in (last - earlier[::-1])[:64]:  # smallest periods first
            period = int(period)
            same = tail[period:] == tail[:-period]
            broken = np.flatnonzero(~same)
            run = same.size - (int(broken[-1]) + 1 if broken.size else 0)
            span = run + period  # words inside the loop, the first copy included
            if span / period >= config.loop_min_repeats and span >= config.loop_min_words:
                return f"last {span} words repeat a {period}-word span {span / period:.1f} times"
    return None


def _byte_loop(data: bytes, config: RepetitionConfig) -> str | None:
    raw = np.frombuffer(data[-TAIL_BYTES:], dtype=np.uint8)
    need = config.loop_min_bytes
    for period in range(1, 33):
        if raw.size <= period or len(data) < need:
            break
        if data[-(need - period):] != data[-need:-period]:  # memcmp pre-check: no loop here
            continue
        same = raw[period:] == raw[:-period]
        broken = np.flatnonzero(~same)
        span = same.size - (int(broken[-1]) + 1 if broken.size else 0) + period
        if span >= config.loop_min_bytes and span / period >= config.loop_min_repeats:
            return f"last {span} bytes repeat a {period}-byte span {span / period:.0f} times"
    return None


def repetition_stats(text: str) -> dict[str, float]:
    """Every statistic of ``text`` (for calibration and ``--rejects`` details)."""
    data = text.encode("utf-8", "surrogatepass")
    hashes, lengths = word_hashes(data)
    lines = _nonempty_lines(text)
    paragraphs = _paragraphs(text)
    stats: dict[str, float] = {"words": float(hashes.size)}
    stats["duplicate_line_fraction"], stats["duplicate_line_char_fraction"] = _duplicate_units(lines)
    (stats["duplicate_paragraph_fraction"],
     stats["duplicate_paragraph_char_fraction"]) = _duplicate_units(paragraphs)
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
    units = [(_paragraphs, _REASONS[:2])] if "\n\n" in text else []
    for split, reasons in [*units, (_nonempty_lines, _REASONS[2:4])]:
        for (stat, limit_name, reason), value in zip(reasons, _duplicate_units(split(text))):
            limit = getattr(config, limit_name)
            if value > limit:
                return Drop(reason, f"{stat} {value:.3f} > {limit}")
    if hashes.size < config.min_words:
        return None
    checks = _REASONS[4:]
    limits = [getattr(config, limit_name) for _, limit_name, _ in checks]
    top_limit = min(config.max_top_3gram_fraction, config.max_top_4gram_fraction)
    for i, (stat, value) in enumerate(_iter_ngram_stats(hashes, lengths, top_limit)):
        name, limit_name, reason = checks[i]
        assert stat == name
        if value is None:  # bounded below its limit without computing it
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
