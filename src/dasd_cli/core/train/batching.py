"""Packed records into micro-batches and optimizer steps.

One packed sequence is one micro-batch. ``global_batch_size`` packed sequences make one
optimizer step, spread over data-parallel ranks round-robin and over gradient
accumulation within a rank. Every rank runs the same number of micro-batches per step
(collectives such as ZeRO-3's parameter gathers need that); a rank left short in a
step's last round re-runs a sequence with weight 0, which adds nothing to the gradient.

The order of sequences is shuffled once per epoch from (seed, epoch), so a resumed run
rebuilds exactly the same order and just skips the steps already done.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dasd_cli.core.chat import IGNORE_INDEX
from dasd_cli.errors import RecordError

INT32_MAX = 2**31 - 1  # token ids, labels and positions are stored as int32
# On-policy packed records (DESIGN.md "Packed sequence") also carry, per token, its
# log-prob under the model that sampled it and under the teacher (0.0 where no loss).
STREAMS = ("sampler_logprobs", "teacher_logprobs")


def target_count(labels: np.ndarray, position_ids: np.ndarray) -> int:
    """Tokens that carry a loss after the next-token shift (sample boundaries excluded)."""
    if len(labels) < 2:
        return 0
    same_sample = position_ids[1:] == position_ids[:-1] + 1
    return int(((labels[1:] != IGNORE_INDEX) & same_sample).sum())


@dataclass
class PackedSequence:
    """One packed record as compact int32 arrays (and float32 log-prob streams, when it
    holds on-policy samples)."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    ids: list[str]
    sampler_logprobs: np.ndarray | None = None
    teacher_logprobs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def target_count(self) -> int:
        """Tokens that carry a loss after the next-token shift (boundaries excluded)."""
        return target_count(self.labels, self.position_ids)


class SequenceList:
    """Packed sequences held in memory, with the interface the trainer reads
    (``len``, ``[i]``, ``target_count(i)``, ``has_streams``; the token store offers the same)."""

    def __init__(self, sequences: list[PackedSequence]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> PackedSequence:
        return self.sequences[index]

    def target_count(self, index: int) -> int:
        return self.sequences[index].target_count

    @property
    def has_streams(self) -> bool:
        """Whether every sequence carries the on-policy log-prob streams."""
        return bool(self.sequences) and all(s.sampler_logprobs is not None and s.teacher_logprobs is not None
                                            for s in self.sequences)


def check_packed(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one packed record (DESIGN.md "Packed sequence") without a model; its int32
    input_ids, labels and position_ids.

    Raises :class:`RecordError` naming the problem: a missing field, lists of unequal
    length, an empty sequence, a negative token id, label or position. The log-prob
    streams of on-policy records are checked by :func:`check_streams`.
    """
    arrays = {}
    for name in ("input_ids", "labels", "position_ids"):
        value = record.get(name)
        if not isinstance(value, list):
            raise RecordError(f"packed record has no '{name}' list", reason="missing_field",
                              hint="dasd train reads packed records, as written by `dasd pack`")
        try:
            arrays[name] = np.asarray(value, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise RecordError(f"'{name}' must be a list of integers", reason="bad_field") from None
        if arrays[name].ndim != 1:
            raise RecordError(f"'{name}' must be a flat list of integers", reason="bad_field")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise RecordError(f"packed record lists differ in length: {lengths}", reason="bad_field")
    if lengths["input_ids"] == 0:
        raise RecordError("packed record is empty", reason="empty")
    ids, labels, positions = arrays["input_ids"], arrays["labels"], arrays["position_ids"]
    if ids.min() < 0 or ids.max() > INT32_MAX:
        raise RecordError(f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is not a "
                          "vocabulary index", reason="bad_token")
    if ((labels != IGNORE_INDEX) & ((labels < 0) | (labels > INT32_MAX))).any():
        raise RecordError("label outside the vocabulary (and not -100)", reason="bad_token")
    if positions.min() < 0 or positions.max() > INT32_MAX:
        raise RecordError("position id out of range", reason="bad_field")
    return ids.astype(np.int32), labels.astype(np.int32), positions.astype(np.int32)


def check_streams(record: dict[str, Any], length: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The float32 ``sampler_logprobs`` and ``teacher_logprobs`` of an on-policy packed
    record, or None when it has neither; RecordError when only one is there, a list is
    not ``length`` finite numbers."""
    present = [name for name in STREAMS if name in record]
    if not present:
        return None
    if len(present) < len(STREAMS):
        missing = next(name for name in STREAMS if name not in record)
        raise RecordError(f"packed record has '{present[0]}' but no '{missing}'", reason="missing_field",
                          hint="on-policy records carry both, as written by `dasd pack` from scored samples")
    arrays = []
    for name in STREAMS:
        value = record[name]
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise RecordError(f"'{name}' must be a list of numbers", reason="bad_field") from None
        if array.ndim != 1 or array.shape[0] != length:
            raise RecordError(f"'{name}' must have one number per token ({length})", reason="bad_field")
        if not np.isfinite(array).all():
            raise RecordError(f"'{name}' holds a value that is not finite", reason="bad_field")
        arrays.append(array.astype(np.float32))
    return arrays[0], arrays[1]


def check_vocab(max_token: int, max_label: int, vocab_size: int | None, where: str = "") -> None:
    """Refuse token ids or labels past the model's vocabulary."""
    if vocab_size is None:
        return
    if max_token >= vocab_size:
        raise RecordError(f"token id {max_token} outside the model's vocabulary (size {vocab_size})"
                          + (f" at {where}" if where else ""), reason="bad_token",
                          hint="pack with the tokenizer of the model you train")
    if max_label >= vocab_size:
        raise RecordError("label outside the vocabulary (and not -100)"
                          + (f" at {where}" if where else ""), reason="bad_token")


def packed_from_record(record: dict[str, Any], vocab_size: int | None = None) -> PackedSequence:
    """Check one packed record (see :func:`check_packed`, plus the vocabulary) into arrays."""
    ids, labels, positions = check_packed(record)
    streams = check_streams(record, len(ids))
    check_vocab(int(ids.max()), int(labels.max()), vocab_size)
    record_ids = record.get("ids", [])
    return PackedSequence(ids, labels, positions,
                          [str(i) for i in record_ids] if isinstance(record_ids, list) else [],
                          *(streams or (None, None)))


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward of one rank: a sequence index and its weight (1 or 0)."""

    index: int  # into the dataset
    weight: float  # 0.0 for a filler micro-batch that only keeps ranks in step


@dataclass(frozen=True)
class StepPlan:
    """What each optimizer step consumes, for one rank."""

    num_sequences: int
    global_batch_size: int  # packed sequences per optimizer step, all ranks together
    world_size: int = 1
    rank: int = 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch; the last one may be smaller."""
        return math.ceil(self.num_sequences / self.global_batch_size)

    def total_steps(self, epochs: int) -> int:
        """Optimizer steps in the whole run."""
        return self.steps_per_epoch * epochs

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per rank in a full step."""
        return math.ceil(self.global_batch_size / self.world_size)

    def epoch_order(self, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
        """The sequence order of an epoch (0-based), the same on every rank."""
        order = list(range(self.num_sequences))
        if shuffle:
            random.Random(f"{seed}:{epoch}").shuffle(order)
        return order

    def step_indices(self, order: list[int], step_in_epoch: int) -> list[int]:
        """All sequences (every rank's) of one step, 0-based within the epoch."""
        start = step_in_epoch * self.global_batch_size
        return order[start:start + self.global_batch_size]

    def rank_micro_batches(self, step_sequences: list[int]) -> list[MicroBatch]:
        """This rank's share of a step: round-robin, padded with weight-0 fillers so
        every rank runs ``ceil(len(step_sequences) / world_size)`` micro-batches."""
        rounds = math.ceil(len(step_sequences) / self.world_size)
        mine = step_sequences[self.rank::self.world_size]
        batches = [MicroBatch(i, 1.0) for i in mine]
        while len(batches) < rounds:
            batches.append(MicroBatch(step_sequences[0], 0.0))
        return batches

    def iter_steps(self, epochs: int, seed: int, start_step: int = 0,
                   shuffle: bool = True) -> Iterator[tuple[int, int, list[int], list[MicroBatch]]]:
        """(global step 1-based, epoch 0-based, all step sequences, this rank's
        micro-batches) for every step after ``start_step`` steps already done."""
        per_epoch = self.steps_per_epoch
        for epoch in range(start_step // per_epoch, epochs):
            order = self.epoch_order(epoch, seed, shuffle)
            first = start_step - epoch * per_epoch if epoch == start_step // per_epoch else 0
            for step_in_epoch in range(max(first, 0), per_epoch):
                step_sequences = self.step_indices(order, step_in_epoch)
                yield (epoch * per_epoch + step_in_epoch + 1, epoch, step_sequences,
                       self.rank_micro_batches(step_sequences))
