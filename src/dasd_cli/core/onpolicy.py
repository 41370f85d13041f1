"""On-policy distillation records: the teacher's scores of the student's own tokens.

METHOD.md section 5: the student samples (its ``sampler`` block holds the raw log-prob
and start character of every token it generated), the teacher scores every one of those
tokens teacher-forced (``teacher_scores``), and training minimizes the per-token reverse
KL on them. Everything here is pure: checks on a record, the ``teacher_scores`` block,
and the token alignment that ``dasd pack`` needs.

With the sampled token ids in the record (``dasd sample --token-ids``), the teacher
scores exactly those tokens and ``dasd pack`` packs them: the tokens always line up.
Without them the response is tokenized again, and the tokens line up when that gives
exactly the sampler's tokens: the same number, starting at the same characters. With the
same tokenizer (the fingerprints in ``sampler.tokenizer`` and ``teacher_scores.tokenizer``
are equal) that holds whenever the sampled token sequence is the tokenizer's canonical
tokenization of its own text; a weak or small model at temperature 1 often samples
sequences that are not (a merge split in two), and those records are dropped by pack.
Different tokenizers are refused: the
per-token reverse KL needs the teacher's log-prob of each of the student's tokens
``y_t`` given ``y_<t``, and a teacher with another vocabulary has none (a log-prob
spread over characters, as DAS does for sentences, would not be the gradient of the
reverse KL at any token whose boundaries differ).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from dasd_cli.core.das import TokenLogprobs, check_logprobs_mode, sampler_tokens
from dasd_cli.core.provenance import TEACHER_SCORES, sampler_block
from dasd_cli.errors import RecordError

ON_POLICY_TEMPERATURE = 1.0  # the sampler's raw log-probs are its sampling distribution only at T=1
ON_POLICY_TOP_P = 1.0


@dataclass
class SampledTokens:
    """The sampler's tokens of a response record, as the teacher must score them."""

    logprobs: Sequence[float] | np.ndarray
    offsets: Sequence[int] | np.ndarray
    tokenizer: str | None  # the sampler's tokenizer fingerprint, when the record has it
    token_ids: list[int] | None = None  # the sampled ids (`dasd sample --token-ids`), when recorded

    def response_tokens(self) -> tuple[list[int], list[int]] | None:
        """(ids, start characters) to score as they are, when the ids were recorded."""
        if self.token_ids is None:
            return None
        return self.token_ids, [int(o) for o in self.offsets]


def _whole_sample(record: dict[str, Any], response: str, verb: str) -> TokenLogprobs:
    """The sampler's tokens of ``record`` (sampler_tokens), or RecordError ``has_prefix``
    when its sampler wrote only part of the response (a mixed-policy continuation)."""
    tokens, start = sampler_tokens(record, response)
    if start:
        raise RecordError(f"record {record.get('id', '?')!r} has prefix_chars {start}: its sampler wrote "
                          "only part of the response", reason="has_prefix",
                          hint=f"on-policy distillation {verb} whole samples of the student")
    return tokens


def sampled_tokens(record: dict[str, Any], response: str, accepted: Collection[str] = ()) -> SampledTokens:
    """The sampler's tokens of an on-policy record, or RecordError naming why it is none.

    The record must hold the sampler's raw log-probs (``accepted`` as in ``dasd score
    --accept-logprobs``) of the whole response (no mixed-policy prefix), sampled at
    temperature 1 and top_p 1, so that they are the log-probs of the distribution the
    tokens were drawn from: the importance ratio and the advantage need exactly those.
    """
    name = record.get("id", "?")
    tokens = _whole_sample(record, response, "scores")
    sampler = sampler_block(record) or {}
    temperature, top_p = sampler.get("temperature"), sampler.get("top_p")
    if temperature != ON_POLICY_TEMPERATURE or top_p not in (ON_POLICY_TOP_P, None):
        raise RecordError(f"record {name!r} was sampled at temperature {temperature}, top_p {top_p}: "
                          "its tokens are not draws from the distribution its raw log-probs describe",
                          reason="not_temperature_1",
                          hint="sample the student with -t 1.0 (and top_p 1.0) for on-policy distillation")
    check_logprobs_mode(record, accepted)
    tokenizer = sampler.get("tokenizer")
    tokenizer = tokenizer if isinstance(tokenizer, str) else None
    return SampledTokens(tokens.logprobs, tokens.offsets, tokenizer, sampled_ids(record, sampler, tokenizer))


def sampled_ids(record: dict[str, Any], sampler: dict[str, Any], tokenizer: str | None) -> list[int] | None:
    """``sampler.token_ids`` checked (one non-negative int per log-prob, and the tokenizer
    that made them named), or None when the record has none."""
    ids = sampler.get("token_ids")
    if ids is None:
        return None
    name = record.get("id", "?")
    if (not isinstance(ids, list) or not all(isinstance(t, int) and t >= 0 for t in ids)
            or len(ids) != len(sampler.get("logprobs") or [])):
        raise RecordError(f"record {name!r}: sampler.token_ids must be one token id per log-prob",
                          reason="bad_sampler_logprobs")
    if tokenizer is None:
        raise RecordError(f"record {name!r} has sampler.token_ids but no sampler.tokenizer: ids mean "
                          "nothing without the tokenizer that made them", reason="bad_sampler_logprobs",
                          hint="dasd sample --token-ids records both")
    return ids


def check_same_tokenizer(record: dict[str, Any], sampled: SampledTokens, teacher_tokenizer: str | None) -> None:
    """RecordError when the sampler's and the teacher's tokenizers are known and differ."""
    if sampled.tokenizer is None or teacher_tokenizer is None or sampled.tokenizer == teacher_tokenizer:
        return
    raise RecordError(
        f"record {record.get('id', '?')!r} was sampled with tokenizer {sampled.tokenizer}, the teacher's "
        f"is {teacher_tokenizer}: the per-token reverse KL needs the teacher's log-prob of each of the "
        "student's tokens, which another vocabulary does not give", reason="tokenizer_mismatch",
        hint="on-policy distillation needs a teacher with the student's tokenizer and chat template")


def aligned(sampler_offsets: Sequence[int] | np.ndarray, offsets: Sequence[int]) -> bool:
    """Whether two tokenizations of one text have the same tokens: as many, starting at the
    same characters."""
    return len(sampler_offsets) == len(offsets) and all(int(a) == int(b) for a, b in zip(sampler_offsets, offsets))


@dataclass
class TeacherScoreTally:
    """What ``dasd score --role teacher`` reports: tokens scored, alignment, the sampled KL."""

    teacher_tokens: int = 0  # tokens the teacher scored in this run (the teacher compute spent)
    aligned: int = 0  # records whose teacher tokens are the sampler's
    misaligned: int = 0
    kl_sum: float = 0.0  # sum over aligned tokens of log pi_sampler - log pi_teacher
    kl_tokens: int = 0

    def add(self, sampled: SampledTokens, logprobs: Sequence[float], offsets: Sequence[int],
            scored_now: bool = True) -> bool:
        """Count one scored record (``scored_now`` False: scores it already held); whether
        its tokens line up."""
        if scored_now:
            self.teacher_tokens += len(logprobs)
        if not aligned(sampled.offsets, offsets):
            self.misaligned += 1
            return False
        self.aligned += 1
        self.kl_sum += math.fsum(float(s) - float(t) for s, t in zip(sampled.logprobs, logprobs))
        self.kl_tokens += len(logprobs)
        return True

    def summary(self) -> dict[str, Any]:
        """The summary's counts; ``reverse_kl`` is the mean per token of log pi_S - log pi_T
        over the aligned records (the student's sampled reverse KL to the teacher)."""
        return {"teacher_tokens": self.teacher_tokens, "aligned": self.aligned, "misaligned": self.misaligned,
                "kl_tokens": self.kl_tokens,
                "reverse_kl": round(self.kl_sum / self.kl_tokens, 6) + 0.0 if self.kl_tokens else None}


def teacher_scores(model: str, model_key: str, tokenizer: str | None, logprobs: Sequence[float],
                   offsets: Sequence[int], is_aligned: bool) -> dict[str, Any]:
    """The ``teacher_scores`` block of a record (DESIGN.md "Records")."""
    return {"model": model, "model_key": model_key, **({"tokenizer": tokenizer} if tokenizer else {}),
            "logprobs": [float(x) for x in logprobs], "offsets": [int(o) for o in offsets],
            "aligned": is_aligned}


def scored_by(record: dict[str, Any], model_key: str) -> bool:
    """Whether the record already holds ``teacher_scores`` of the model with this content key."""
    block = record.get(TEACHER_SCORES)
    return isinstance(block, dict) and block.get("model_key") == model_key and isinstance(block.get("logprobs"), list)


# --------------------------------------------------------------------------- packing


def is_on_policy(record: dict[str, Any]) -> bool:
    """Whether a response record holds a teacher's scores of its sampled tokens."""
    return TEACHER_SCORES in record


@dataclass
class ScoredSample:
    """The two log-prob streams of an on-policy record, per sampled token."""

    sampler_logprobs: Sequence[float] | np.ndarray
    sampler_offsets: Sequence[int] | np.ndarray
    teacher_logprobs: Sequence[float]
    teacher_offsets: Sequence[int]
    token_ids: list[int] | None = None  # the sampled ids, when recorded: packed as they are

    def response_tokens(self) -> tuple[list[int], list[int]] | None:
        """(ids, start characters) to pack as they are, when the ids were recorded."""
        if self.token_ids is None:
            return None
        return self.token_ids, [int(o) for o in self.sampler_offsets]


def scored_sample(record: dict[str, Any], response: str, tokenizer: str) -> ScoredSample:
    """The sampler's and the teacher's per-token log-probs of an on-policy record, checked
    without tokenizing: RecordError when a block is missing or malformed, or when the
    record was sampled or scored with another tokenizer than ``tokenizer`` (the fingerprint
    of the student's, which ``dasd pack`` packs with)."""
    name = record.get("id", "?")
    sampler = _whole_sample(record, response, "trains on")
    scores = record.get(TEACHER_SCORES)
    if not isinstance(scores, dict):
        scores = {}
    logprobs, offsets = scores.get("logprobs"), scores.get("offsets")
    if not isinstance(logprobs, list) or not isinstance(offsets, list) or len(logprobs) != len(offsets):
        raise RecordError(f"record {name!r}: teacher_scores needs logprobs and offsets lists of one "
                          "length", reason="bad_teacher_scores",
                          hint="teacher_scores are written by `dasd score --role teacher`")
    for block_name, block in (("sampler", sampler_block(record) or {}), (TEACHER_SCORES, scores)):
        used = block.get("tokenizer")
        if isinstance(used, str) and used != tokenizer:
            raise RecordError(f"record {name!r}: {block_name} used tokenizer {used}, the packing "
                              f"tokenizer is {tokenizer}", reason="tokenizer_mismatch",
                              hint="pack on-policy samples with the student's tokenizer (--tokenizer STUDENT)")
    block = sampler_block(record) or {}
    used = block.get("tokenizer")
    ids = sampled_ids(record, block, used if isinstance(used, str) else None)
    return ScoredSample(sampler.logprobs, sampler.offsets, logprobs, offsets, ids)


def token_streams(sample: ScoredSample, response_offsets: Sequence[int], prompt_len: int,
                  length: int) -> tuple[Any, Any] | None:
    """float32 arrays of ``length`` (the sample's tokens: prompt, response, end of turn)
    holding the sampler's and the teacher's log-prob of each response token, NaN elsewhere
    (no loss there: the prompt, and the end of turn, which neither log-prob covers); None
    when the packing tokenizer's response tokens (starting at ``response_offsets``) are
    not the sampled and scored ones."""
    import numpy as np

    if not (aligned(sample.sampler_offsets, response_offsets) and aligned(sample.teacher_offsets, response_offsets)):
        return None
    sampler = np.full(length, np.nan, dtype=np.float32)
    teacher = np.full(length, np.nan, dtype=np.float32)
    n = len(response_offsets)
    sampler[prompt_len:prompt_len + n] = np.asarray(sample.sampler_logprobs, dtype=np.float32)
    teacher[prompt_len:prompt_len + n] = np.asarray(sample.teacher_logprobs, dtype=np.float32)
    return sampler, teacher
