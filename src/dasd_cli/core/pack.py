"""Packing tokenized samples into fixed-capacity training sequences.

Three pieces, all pure:

- :func:`encode_batch` tokenizes many (messages, response) pairs with batched tokenizer
  calls, giving exactly what :func:`dasd_cli.core.chat.encode_example` gives one at a
  time (prompt rendered by the template, response appended raw, then end of turn).
- :func:`best_fit_decreasing` assigns samples to sequences: global best-fit decreasing,
  deterministic, O(n log L) through a 64-ary bitmap tree over remaining capacities.
- :func:`plan_sequences` turns the sample lengths into sequences (lists of sample
  indices), and :func:`packed_record` builds one packed record (DESIGN.md "Packed
  sequence") from its
  samples' token arrays: ``input_ids``, ``labels``, ``position_ids`` restarting at 0
  per sample, ``ids``, ``tokenizer``. Where the token arrays live (on disk, for
  ``dasd pack``) is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dasd_cli.core.chat import IGNORE_INDEX, Tokenizer, encode_ids, end_of_turn, render_prompt, tokenize_with_offsets
from dasd_cli.core.sorting import stable_argsort

_WORD = 64  # bits per bitmap word of the capacity index


# --------------------------------------------------------------------------- tokenizing


def encode_batch(tokenizer: Tokenizer, examples: Sequence[tuple[list[dict[str, str]], str]]
                 ) -> list[tuple[np.ndarray, int]]:
    """Token ids (int32) and prompt length of each (messages, response) pair.

    Same ids as ``encode_example(tokenizer, messages, response)``, but the prompts and
    the responses are each tokenized in one batched call (the slow part of ``pack``).
    The response is never rendered by the template, so a template that strips
    ``<think>`` from assistant history leaves the training target whole.
    """
    if not examples:
        return []
    prompts = [render_prompt(tokenizer, messages) for messages, _ in examples]
    responses = [response for _, response in examples]
    end_ids = np.asarray(encode_ids(tokenizer, end_of_turn(tokenizer)), dtype=np.int32)
    prompt_ids = _ids_batch(tokenizer, prompts)
    response_ids = _ids_batch(tokenizer, responses)
    out = []
    for p_ids, r_ids in zip(prompt_ids, response_ids):
        parts = [np.asarray(p_ids, dtype=np.int32), np.asarray(r_ids, dtype=np.int32), end_ids]
        out.append((np.concatenate(parts), len(p_ids)))
    return out


def encode_batch_with_offsets(tokenizer: Tokenizer, examples: Sequence[tuple[list[dict[str, str]], str]],
                              tokens: Sequence[tuple[list[int], list[int]] | None] | None = None
                              ) -> list[tuple[np.ndarray, int, list[int]]]:
    """:func:`encode_batch`, and each response token's start character in the response
    (the offsets ``dasd score`` gives its tokens: core.chat.tokenize_with_offsets).

    ``tokens[i]`` (ids, start characters), when given, are response i's tokens as they
    were sampled: used as they are instead of tokenizing the response again.
    """
    if not examples:
        return []
    prompts = [render_prompt(tokenizer, messages) for messages, _ in examples]
    end_ids = np.asarray(encode_ids(tokenizer, end_of_turn(tokenizer)), dtype=np.int32)
    prompt_ids = _ids_batch(tokenizer, prompts)
    out = []
    for i, (p_ids, (_, response)) in enumerate(zip(prompt_ids, examples)):
        given = tokens[i] if tokens is not None else None
        r_ids, offsets = given if given is not None else tokenize_with_offsets(tokenizer, response)
        parts = [np.asarray(p_ids, dtype=np.int32), np.asarray(r_ids, dtype=np.int32), end_ids]
        out.append((np.concatenate(parts), len(p_ids), offsets))
    return out


def _ids_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added.

    A fast tokenizer's ``encode_batch_fast`` gives the same ids as calling the tokenizer,
    without computing the character offsets that packing does not need.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [encoding.ids for encoding in fast(texts, add_special_tokens=False)]


# --------------------------------------------------------------------------- bin packing


class _CapacityIndex:
    """Open sequences grouped by remaining capacity (an integer 0..L).

    ``stacks[c]`` holds the sequences with exactly ``c`` tokens free; a hierarchical
    bitmap (64 bits per word, ceil(log64(L+1)) levels) marks the non-empty stacks, so
    "the smallest capacity >= s that has a sequence" costs O(log64 L) small-int ops.
    """

    def __init__(self, capacity: int) -> None:
        self.stacks: list[list[int]] = [[] for _ in range(capacity + 1)]
        self.levels: list[list[int]] = []
        bits = capacity + 1
        while True:
            words = -(-bits // _WORD)
            self.levels.append([0] * words)
            if words == 1:
                break
            bits = words

    def smallest_at_least(self, size: int) -> int:
        """The smallest capacity >= ``size`` with an open sequence, or -1."""
        levels = self.levels
        top = len(levels) - 1
        level, pos = 0, size
        while True:
            words = levels[level]
            word_index = pos >> 6
            if word_index >= len(words):
                return -1
            word = words[word_index] >> (pos & 63)
            if word:
                pos += (word & -word).bit_length() - 1
                break
            if level == top:
                return -1
            level, pos = level + 1, word_index + 1  # next word, one level up
        while level:  # descend to the lowest set bit under pos
            level -= 1
            word = levels[level][pos]
            pos = (pos << 6) + (word & -word).bit_length() - 1
        return pos

    def mark(self, cap: int) -> None:
        """Stack ``cap`` became non-empty."""
        for words in self.levels:
            index, bit = cap >> 6, 1 << (cap & 63)
            was = words[index]
            words[index] = was | bit
            if was:
                return
            cap = index

    def unmark(self, cap: int) -> None:
        """Stack ``cap`` became empty."""
        for words in self.levels:
            index, bit = cap >> 6, 1 << (cap & 63)
            now = words[index] & ~bit
            words[index] = now
            if now:
                return
            cap = index


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> np.ndarray:
    """Assign each item to a sequence (bin) of ``capacity`` tokens; returns bin per item.

    Items are placed longest first (ties: input order); each goes into the open bin
    with the least free space that still fits it (ties: the bin that reached that free
    space last), or opens a new bin. Bins are numbered in the order they open.
    Deterministic; O(n log n) for the sort plus O(n log L) for the placements.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError("lengths must be one-dimensional")
    n = len(sizes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if sizes.min() < 1 or sizes.max() > capacity:
        raise ValueError(f"every length must be in 1..{capacity}")
    order = stable_argsort(capacity - sizes)  # longest first; ties in input order
    sorted_sizes = sizes[order]
    # Runs of equal size: a bin that takes one item of a run takes as many more as fit,
    # because its new free space is then the smallest that still fits (no other bin
    # lies between), so a run is placed bin by bin instead of item by item.
    bounds = (np.flatnonzero(np.diff(sorted_sizes)) + 1).tolist()
    run_starts, run_ends = [0] + bounds, bounds + [n]
    run_sizes = sorted_sizes[run_starts].tolist()
    smallest = int(sorted_sizes[-1])  # a bin with less free space than this is closed for good
    index = _CapacityIndex(capacity)
    stacks, find, mark, unmark = index.stacks, index.smallest_at_least, index.mark, index.unmark
    # The level-0 and level-1 bitmaps are read inline: most look-ups end there, no call.
    words = index.levels[0]
    upper = index.levels[1] if len(index.levels) > 1 else None
    n_words = len(words)
    targets = [0] * n  # bin of the i-th item in sorted order
    bins = 0
    for size, pos, end in zip(run_sizes, run_starts, run_ends):
        while pos < end:
            w = size >> 6
            word = words[w] >> (size & 63)
            if word:
                cap = size + (word & -word).bit_length() - 1
            else:
                w += 1
                if upper is not None and w < n_words and (word := upper[w >> 6] >> (w & 63)):
                    w += (word & -word).bit_length() - 1
                    word = words[w]
                    cap = (w << 6) + (word & -word).bit_length() - 1
                else:
                    cap = find(size)
            if cap < 0:
                target, cap = bins, capacity
                bins += 1
            else:
                stack = stacks[cap]
                target = stack.pop()
                if not stack:
                    unmark(cap)
            take = cap // size
            if take == 1 or end - pos == 1:
                targets[pos] = target
                pos += 1
                free = cap - size
            else:
                if take > end - pos:
                    take = end - pos
                targets[pos:pos + take] = [target] * take
                pos += take
                free = cap - take * size
            if free >= smallest:
                stack = stacks[free]
                stack.append(target)
                if len(stack) == 1:
                    w = free >> 6
                    was = words[w]
                    if was:
                        words[w] = was | (1 << (free & 63))
                    else:
                        mark(free)  # and the levels above
    bin_of = np.empty(n, dtype=np.int64)
    bin_of[order] = targets
    return bin_of


def one_per_bin(n: int) -> np.ndarray:
    """The ``--no-pack`` assignment: item i alone in sequence i."""
    return np.arange(n, dtype=np.int64)


def lower_bound(lengths: Sequence[int] | np.ndarray, capacity: int) -> int:
    """No packing can use fewer sequences than ceil(total tokens / capacity)."""
    return math.ceil(int(np.sum(np.asarray(lengths, dtype=np.int64))) / capacity)


def bin_members(bin_of: np.ndarray) -> list[np.ndarray]:
    """Item indices of each bin, bins in order, items in input order within a bin."""
    if len(bin_of) == 0:
        return []
    order = stable_argsort(bin_of)  # stable: input order within a bin
    ends = np.cumsum(np.bincount(bin_of)).tolist()
    return [order[start:end] for start, end in zip([0] + ends[:-1], ends)]


# --------------------------------------------------------------------------- packed records


@dataclass
class PackReport:
    """Counts for the summary line: samples, sequences, tokens, efficiency."""

    samples: int
    sequences: int
    tokens: int
    capacity: int

    @property
    def efficiency(self) -> float:
        """tokens / (sequences x capacity): 1.0 means no padding would be needed."""
        return self.tokens / (self.sequences * self.capacity) if self.sequences else 0.0


def plan_sequences(lengths: np.ndarray, capacity: int, pack: bool = True
                   ) -> tuple[list[np.ndarray], PackReport]:
    """The sample indices of every sequence, in output order, and their counts.

    With ``pack`` the samples go through :func:`best_fit_decreasing`; without it each
    sample is its own sequence, in input order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    bin_of = best_fit_decreasing(lengths, capacity) if pack else one_per_bin(len(lengths))
    members = bin_members(bin_of)
    return members, PackReport(len(lengths), len(members), int(lengths.sum()), capacity)


def packed_record(parts: Sequence[np.ndarray], prompt_lens: Sequence[int], ids: Sequence[str],
                  tokenizer: str | None = None,
                  streams: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """One packed sequence of the given samples, in that order (numpy int32 arrays).

    ``parts[k]`` are sample k's token ids, of which the first ``prompt_lens[k]`` carry
    no loss; ``tokenizer`` is the fingerprint of the tokenizer that made them. With
    ``streams`` (on-policy samples: per sample the sampler's and the teacher's log-prob of
    each token, NaN where there is none) the record also has ``sampler_logprobs`` and
    ``teacher_logprobs``, 0.0 where there is no loss, and only tokens with both log-probs
    carry a label.
    """
    input_ids = np.concatenate([np.asarray(p, dtype=np.int32) for p in parts])
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    starts = np.cumsum(lens) - lens
    position_ids = (np.arange(len(input_ids), dtype=np.int64)
                    - np.repeat(starts, lens)).astype(np.int32)
    labels = input_ids.copy()
    for start, prompt_len in zip(starts.tolist(), prompt_lens):
        labels[start:start + int(prompt_len)] = IGNORE_INDEX
    record: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                              "ids": list(ids)}
    if streams is not None:
        sampler = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in streams])
        teacher = np.concatenate([np.asarray(t, dtype=np.float32) for _, t in streams])
        scored = ~(np.isnan(sampler) | np.isnan(teacher))
        labels[~scored] = IGNORE_INDEX
        record["sampler_logprobs"] = np.where(scored, sampler, 0.0).astype(np.float32)
        record["teacher_logprobs"] = np.where(scored, teacher, 0.0).astype(np.float32)
    if tokenizer is not None:
        record["tokenizer"] = tokenizer
    return record
