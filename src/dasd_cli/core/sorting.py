"""Sorting helpers for packing."""

from __future__ import annotations

import numpy as np


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys, in linear time.

    NumPy's stable sort is a radix sort for 16-bit keys: keys below 2**32 are sorted by
    their low 16 bits, then stably by their high 16 bits (LSD radix): two linear passes
    instead of a comparison sort.
    """
    keys = np.asarray(keys)
    if keys.size == 0:
        return np.argsort(keys, kind="stable")
    low_key, high_key = int(keys.min()), int(keys.max())
    if low_key < 0 or high_key >= 1 << 32:
        return np.argsort(keys, kind="stable")
    if high_key < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")
    return low[high]
