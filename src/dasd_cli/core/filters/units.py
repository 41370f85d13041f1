"""Compiled kernel of the duplicate line and paragraph statistics, on the UTF-8 bytes.

The units are those of ``str.split`` and ``str.strip`` in Python: lines split at "\\n",
paragraphs at the regular expression ``\\n[ \\t]*\\n+``, each stripped of the whitespace
``str.strip()`` removes (``str.isspace``: ASCII \\t-\\r, \\x1c-\\x1f and space, and the
Unicode spaces below), empty ones left out; characters are code points (UTF-8 lead bytes).
Units are grouped by a hash and compared byte for byte, so equal means equal text. The hash
is cheap (length, first and last 8 bytes); a unit that meets a different one under the same
cheap hash takes a hash of all its bytes instead, so units alike at both ends (table rows,
numbered steps) stay linear to group.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_CHEAP = np.uint64(0x7FFFFFFFFFFFFFFF)  # cheap hashes have the top bit clear, full ones set


@njit(cache=True, nogil=True)
def _space_at(data, i, end):
    """Bytes of the whitespace code point at ``i`` (before ``end``), or 0."""
    b = data[i]
    if b < 0x80:
        return 1 if (b == 32 or 9 <= b <= 13 or 0x1C <= b <= 0x1F) else 0
    if b == 0xC2 and i + 1 < end:
        c = data[i + 1]
        return 2 if (c == 0x85 or c == 0xA0) else 0  # U+0085, U+00A0
    if i + 2 >= end:
        return 0
    c, d = data[i + 1], data[i + 2]
    if b == 0xE1:
        return 3 if (c == 0x9A and d == 0x80) else 0  # U+1680
    if b == 0xE2:
        if c == 0x80 and (0x80 <= d <= 0x8A or d == 0xA8 or d == 0xA9 or d == 0xAF):
            return 3  # U+2000-U+200A, U+2028, U+2029, U+202F
        return 3 if (c == 0x81 and d == 0x9F) else 0  # U+205F
    if b == 0xE3:
        return 3 if (c == 0x80 and d == 0x80) else 0  # U+3000
    return 0


@njit(cache=True, nogil=True)
def _strip(data, start, end):
    """(start, end) of the range without its leading and trailing whitespace."""
    while start < end:
        k = _space_at(data, start, end)
        if k == 0:
            break
        start += k
    while start < end:
        p = end - 1
        while p > start and (data[p] & 0xC0) == 0x80:  # back to the code point's lead byte
            p -= 1
        if _space_at(data, p, end) != end - p:
            break
        end = p
    return start, end


@njit(cache=True, nogil=True)
def _segments(data, paragraphs):
    """(starts, ends) of the lines, or of the paragraphs (split at \\n[ \\t]*\\n+)."""
    n = data.size
    starts = np.empty(n + 1, dtype=np.int64)
    ends = np.empty(n + 1, dtype=np.int64)
    count = 0
    start = 0
    i = 0
    while i < n:
        if data[i] != 10:
            i += 1
            continue
        if not paragraphs:
            starts[count], ends[count] = start, i
            count += 1
            start = i + 1
            i += 1
            continue
        j = i + 1
        while j < n and (data[j] == 32 or data[j] == 9):
            j += 1
        if j < n and data[j] == 10:
            while j < n and data[j] == 10:
                j += 1
            starts[count], ends[count] = start, i
            count += 1
            start = i = j
        else:
            i += 1
    starts[count], ends[count] = start, n
    return starts[:count + 1], ends[:count + 1]


@njit(cache=True, nogil=True)
def _key(data, s, e):
    """A cheap hash of the range: its length and its first and last 8 bytes (top bit clear)."""
    h = _FNV_OFFSET ^ np.uint64(e - s)
    for p in range(s, min(e, s + 8)):
        h = (h ^ np.uint64(data[p])) * _FNV_PRIME
    for p in range(max(s + 8, e - 8), e):
        h = (h ^ np.uint64(data[p])) * _FNV_PRIME
    return h & _CHEAP


@njit(cache=True, nogil=True)
def _full_key(data, s, e):
    """A hash of every byte of the range, 8 at a time (top bit set: never a cheap hash)."""
    h = _FNV_OFFSET ^ np.uint64(e - s)
    p = s
    while p + 8 <= e:
        word = np.uint64(0)
        for q in range(8):
            word |= np.uint64(data[p + q]) << np.uint64(8 * q)
        h = (h ^ word) * _FNV_PRIME
        h ^= h >> np.uint64(29)
        p += 8
    while p < e:
        h = (h ^ np.uint64(data[p])) * _FNV_PRIME
        p += 1
    return h | ~_CHEAP


@njit(cache=True, nogil=True)
def _count(data, paragraphs, out, at):
    """Units, duplicate units, characters and duplicate characters into out[at:at + 4]."""
    seg_starts, seg_ends = _segments(data, paragraphs)
    m = seg_starts.size
    starts = np.empty(m, dtype=np.int64)
    ends = np.empty(m, dtype=np.int64)
    units = 0
    for k in range(m):
        s, e = _strip(data, seg_starts[k], seg_ends[k])
        if e > s:
            starts[units], ends[units] = s, e
            units += 1
    capacity = 16
    while capacity < 2 * units:
        capacity *= 2
    slots = np.full(capacity, -1, dtype=np.int64)
    slot_hashes = np.empty(capacity, dtype=np.uint64)
    total_chars = dup = dup_chars = 0
    for u in range(units):
        s, e = starts[u], ends[u]
        chars = 0
        for p in range(s, e):  # code points: the bytes that are not UTF-8 continuations
            chars += (data[p] & 0xC0) != 0x80
        total_chars += chars
        h = _key(data, s, e)
        full = False
        slot = np.int64(h & np.uint64(capacity - 1))
        while True:
            other = slots[slot]
            if other < 0:
                slots[slot] = u
                slot_hashes[slot] = h
                break
            if slot_hashes[slot] == h and ends[other] - starts[other] == e - s:
                o = starts[other]
                same = True
                for p in range(e - s):
                    if data[o + p] != data[s + p]:
                        same = False
                        break
                if same:
                    dup += 1
                    dup_chars += chars
                    break
                if not full:
                    # The one unit kept under this cheap hash differs: this unit (and any
                    # copy of it, which meets the same one) goes by its full hash.
                    h = _full_key(data, s, e)
                    full = True
                    slot = np.int64(h & np.uint64(capacity - 1))
                    continue
            slot = (slot + 1) & (capacity - 1)
    out[at], out[at + 1], out[at + 2], out[at + 3] = units, dup, total_chars, dup_chars


@njit(cache=True, nogil=True)
def duplicate_units(data, paragraphs):
    """[units, duplicates, characters, duplicate characters] of the non-empty lines, then
    the same of the paragraphs when ``paragraphs`` (else zeros); a duplicate repeats an
    earlier unit."""
    out = np.zeros(8, dtype=np.int64)
    _count(data, False, out, 0)
    if paragraphs:
        _count(data, True, out, 4)
    return out
