"""Compiled kernels of the repetition statistics: word hashes and n-gram statistics.

One pass over the bytes hashes the words; one hash-table pass per n groups the n-grams
that can still repeat. Compiled by numba (``cache=True``: once per installation, then
loaded from its cache). The definitions are those of :mod:`repetition`. The arithmetic
is exact (64-bit wrap-around hashes, integer character counts, one float division per
statistic), so every value is reproducible bit for bit; tests/test_repetition_equality.py
holds the values the filter must give.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_P = np.uint64(0x100000001B3)  # FNV prime: word hash base
_Q = np.uint64(0x9E3779B97F4A7C15)  # n-gram combining multiplier (odd)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ZERO, _ONE = np.uint64(0), np.uint64(1)

LOWER = np.arange(256, dtype=np.uint64)
LOWER[ord("A"):ord("Z") + 1] += 32
LOWER += 1  # no byte hashes to 0
IS_WORD = np.zeros(256, dtype=np.bool_)
for _lo, _hi in ((ord("a"), ord("z")), (ord("A"), ord("Z")), (ord("0"), ord("9")), (128, 255)):
    IS_WORD[_lo:_hi + 1] = True

N_STATS = 9  # top 2-, 3-, 4-gram, duplicate 5- to 10-gram fractions, in that order


@njit(cache=True, nogil=True)
def _mix(h):
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits."""
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


@njit(cache=True, nogil=True)
def word_hashes(data, lower, is_word):
    """(hash, byte length) of each word of the UTF-8 bytes ``data``, case-insensitive.

    A word's hash is sum(lower[b_i] * P**i) over its bytes, modulo 2**64, then mixed.
    """
    hashes = np.empty(data.size // 2 + 1, dtype=np.uint64)
    lengths = np.empty(data.size // 2 + 1, dtype=np.int64)
    count = 0
    start = -1
    h = _ZERO
    power = _ONE
    for i in range(data.size):
        b = data[i]
        if is_word[b]:
            if start < 0:
                start = i
                h = _ZERO
                power = _ONE
            h += lower[b] * power
            power *= _P
        elif start >= 0:
            hashes[count] = _mix(h)
            lengths[count] = i - start
            count += 1
            start = -1
    if start >= 0:
        hashes[count] = _mix(h)
        lengths[count] = data.size - start
        count += 1
    return hashes[:count].copy(), lengths[:count].copy()


@njit(cache=True, nogil=True)
def _group(keys):
    """(size of each key's group, whether it is its group's first occurrence), per key."""
    m = keys.size
    capacity = 16
    while capacity < 2 * m:
        capacity *= 2
    mask = np.uint64(capacity - 1)
    slots = np.full(capacity, -1, dtype=np.int32)
    slot_keys = np.empty(capacity, dtype=np.uint64)
    group = np.empty(m, dtype=np.int32)
    first = np.empty(m, dtype=np.bool_)
    counts = np.zeros(m, dtype=np.int64)
    groups = 0
    for i in range(m):
        key = keys[i]
        s = np.int64(key & mask)
        while True:
            g = slots[s]
            if g < 0:
                slots[s] = groups
                slot_keys[s] = key
                g = groups
                groups += 1
                break
            if slot_keys[s] == key:
                break
            s = (s + 1) & (capacity - 1)
        group[i] = g
        first[i] = counts[g] == 0
        counts[g] += 1
    sizes = np.empty(m, dtype=np.int64)
    for i in range(m):
        sizes[i] = counts[group[i]]
    return sizes, first


@njit(cache=True, nogil=True)
def ngram_stats(hashes, lengths, top_limit, limits, decide):
    """The 9 n-gram statistics (see :mod:`repetition`), in order; NaN where not computed.

    Top n-gram (n = 2, 3, 4): characters of the most frequent n-gram's occurrences (the
    earliest, among equally frequent ones) over all word characters. Duplicate n-gram
    (n = 5..10): characters of words inside a repeated (not first) occurrence.

    Only the positions whose (n-1)-gram repeated are grouped at n. With ``decide``, stops
    at the first value over its limit in ``limits``, or at a duplicate fraction at most
    every remaining limit; with ``top_limit >= 0`` the top 3- and 4-gram fractions are
    skipped when twice the heaviest 2-gram (occurrences x characters) is at most it (an
    n-gram occurring c times is no heavier than two of its 2-grams, each occurring at
    least c times), and the 5-gram candidates come from the 2-grams: a 5-gram repeats
    only where its four 2-grams all do.
    """
    values = np.full(N_STATS, np.nan)
    n_words = hashes.size
    total = float(lengths.sum())
    if total == 0.0:
        total = 1.0
    cum_len = np.zeros(n_words + 1, dtype=np.int64)
    for i in range(n_words):
        cum_len[i + 1] = cum_len[i] + lengths[i]
    gram = hashes.copy()
    candidates = np.arange(n_words)
    n = 2
    while n <= 10:
        count = n_words - n + 1
        if count > 0:
            for i in range(count):
                gram[i] = gram[i] * _Q + hashes[i + n - 1]
            kept = 0
            for i in range(candidates.size):
                if candidates[i] < count:
                    kept += 1
            candidates = candidates[:kept]
        if count <= 0 or candidates.size == 0:
            for k in range(n, 11):
                values[k - 2] = 0.0
            return values
        keys = np.empty(candidates.size, dtype=np.uint64)
        for i in range(candidates.size):
            keys[i] = gram[candidates[i]]
        sizes, first = _group(keys)
        if n <= 4:
            top = 0
            for i in range(sizes.size):
                top = max(top, sizes[i])
            value = 0.0
            if top > 1:
                for i in range(sizes.size):  # the earliest of the most frequent n-grams
                    if sizes[i] == top:
                        start = candidates[i]
                        value = min(1.0, float(top * (cum_len[start + n] - cum_len[start])) / total)
                        break
            values[n - 2] = value
            if decide and value > limits[n - 2]:
                return values
            if n == 2 and top_limit >= 0.0 and n_words >= 5:
                heaviest = 0
                for i in range(sizes.size):
                    if first[i]:
                        p = candidates[i]
                        heaviest = max(heaviest, sizes[i] * (cum_len[p + 2] - cum_len[p]))
                if 2 * heaviest / total <= top_limit:
                    for k in (3, 4):
                        for i in range(n_words - k + 1):
                            gram[i] = gram[i] * _Q + hashes[i + k - 1]
                    c = n_words - 4
                    picked = np.empty(c, dtype=np.int64)
                    kept = 0
                    for p in range(c):  # candidates: positions i, i = 0..n_words - 2 at n = 2
                        if sizes[p] > 1 and sizes[p + 1] > 1 and sizes[p + 2] > 1 and sizes[p + 3] > 1:
                            picked[kept] = p
                            kept += 1
                    candidates = picked[:kept]
                    n = 5
                    continue
        else:
            cover = np.zeros(n_words + 1, dtype=np.int32)
            for i in range(sizes.size):
                if not first[i]:  # a repeated occurrence
                    cover[candidates[i]] += 1
                    cover[candidates[i] + n] -= 1
            covered_chars = 0
            depth = 0
            for p in range(n_words):
                depth += cover[p]
                if depth > 0:
                    covered_chars += lengths[p]
            value = float(covered_chars) / total
            values[n - 2] = value
            if decide:
                if value > limits[n - 2]:
                    return values
                lowest = limits[n - 2]
                for k in range(n - 1, N_STATS):
                    lowest = min(lowest, limits[k])
                if value <= lowest:
                    return values
        kept = 0
        for i in range(sizes.size):
            if sizes[i] > 1:
                candidates[kept] = candidates[i]
                kept += 1
        candidates = candidates[:kept]
        n += 1
    return values


@njit(cache=True, nogil=True)
def word_loop(tail, min_repeats, min_words):
    """(span, period) of the loop ``tail`` ends in, with the smallest period, or (0, 0).

    For a period p the loop runs back from the end while each word equals the word p
    earlier; its span (first copy included) is p + z[p], where z is the Z-array of the
    reversed tail (z[p]: the words the tail's end shares with the tail cut p words short).
    A loop repeats at least the final 3 words, spans ``min_words`` and holds
    ``min_repeats`` copies. The Z-array is linear in the tail, so every period that could
    hold that many copies is tried.
    """
    n = tail.size
    if n < 4:  # a period and 3 repeated words
        return 0, 0
    last = n - 1  # rev[k] is tail[last - k]
    end_word = tail[last]
    # a span is at most n words, so a period over n / min_repeats cannot repeat enough
    longest = n - 1 if min_repeats <= 1.0 else int(n / min_repeats)
    z = np.zeros(longest + 1, dtype=np.int64)
    left = right = 0  # the window rev[left:right] that matches rev's start, rightmost end
    for p in range(1, longest + 1):
        if p >= right:
            if tail[last - p] != end_word:
                continue  # z[p] = 0: most periods stop here
            k = 0
        else:
            k = min(right - p, z[p - left])
        while p + k < n and tail[last - k] == tail[last - p - k]:
            k += 1
        z[p] = k
        if p + k > right:
            left, right = p, p + k
        span = p + k
        if k >= 3 and span >= min_words and span / p >= min_repeats:
            return span, p
    return 0, 0


@njit(cache=True, nogil=True)
def byte_loop(data, tail_bytes, min_bytes, min_repeats):
    """(span, period) of the loop inside the final bytes of ``data``, or (0, 0).

    Periods 1 to 32 in turn (shorter than the tail), the first that qualifies: the loop,
    run back from the end over the final ``tail_bytes`` bytes while each byte equals the
    one a period earlier (first copy included), spans ``min_bytes`` and holds
    ``min_repeats`` copies. Most periods stop at the first byte or two.
    """
    n = data.size
    tail = min(n, tail_bytes)
    for period in range(1, 33):
        if tail <= period or n < min_bytes:
            break
        j = n - 1
        while j - period >= n - tail and data[j] == data[j - period]:
            j -= 1
        span = n - 1 - j + period
        if span >= min_bytes and span / period >= min_repeats:
            return span, period
    return 0, 0
