"""Divergence-aware sampling (DAS): sentence alignment, classification and provenance.

Each model (teacher, student, optionally a distilled student) scores the same text with
its own tokenizer; every token carries the character offset where it starts. A token
belongs to the sentence holding its first character, and a sentence's probability under
a model is exp(mean log-prob of its tokens), the geometric mean of token probabilities.

A sentence that some model has no token for (its text lies inside a token that starts in
the sentence before, e.g. a short sentence swallowed by a multi-character token) has no
probability under that model. It is merged into the sentence before it (into the next
one when it is the first), so every reported sentence has tokens under every model;
:attr:`Analysis.merged` counts how many sentences were merged away.

Classification with margin beta (METHOD.md section 2): teacher if p_T - p_S > beta, student if
p_T - p_S < -beta, else shared. With a distilled student p_D, a shared sentence whose
p_D exceeds both p_T and p_S by more than alpha is boosted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from dasd_cli.core.provenance import sampler_block
from dasd_cli.core.segment import sentence_spans

TYPES = ("teacher", "shared", "student")
# sampler.logprobs_mode: "raw" is what METHOD.md section 2 asks for (the unscaled, temperature-1
# distribution); "processed" is after temperature / top-p; "unknown" is a sample whose
# server did not say (a record without the field, from before it existed, counts so).
LOGPROBS_MODES = ("raw", "processed", "unknown")
BOOSTED = "boosted"
DEFAULT_BETA = 0.1
DEFAULT_ALPHA = 0.1


@dataclass
class TokenLogprobs:
    """One model's view of the text: a log-prob and a start character per token."""

    logprobs: Sequence[float] | np.ndarray
    offsets: Sequence[int] | np.ndarray

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.offsets):
            raise ValueError(f"{len(self.logprobs)} logprobs but {len(self.offsets)} offsets")


@dataclass
class Analysis:
    """The result for one response: sentences with probabilities and types."""

    spans: list[tuple[int, int]]
    p_sentences: list[list[float]]  # [model][sentence] geometric-mean probabilities
    p_response: list[float]  # [model] geometric mean over every token in the scored part
    types: list[str]
    merged: int = 0  # sentences merged into a neighbour (no token under some model)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def score(self) -> int:
        """The DAS selection score: the number of teacher sentences."""
        return self.counts.get("teacher", 0)


def geometric_mean(logprobs: Sequence[float] | np.ndarray) -> float:
    """exp(mean log-prob): the geometric mean of token probabilities (NaN if no tokens)."""
    import numpy as np  # imported on use: `dasd` starts without numpy
    if len(logprobs) == 0:
        return math.nan
    return float(math.exp(float(np.mean(np.asarray(logprobs, dtype=np.float64)))))


def classify(p_teacher: float, p_student: float, beta: float = DEFAULT_BETA) -> str:
    """teacher / shared / student by the margin beta on p_T - p_S."""
    diff = p_teacher - p_student
    if diff > beta:
        return "teacher"
    if diff < -beta:
        return "student"
    return "shared"


def in_range(model: TokenLogprobs, start: int, end: int) -> TokenLogprobs:
    """Only the tokens that start inside [start, end) (e.g. past a student prefix)."""
    import numpy as np  # imported on use: `dasd` starts without numpy
    offsets = np.asarray(model.offsets, dtype=np.int64)
    keep = (offsets >= start) & (offsets < end)
    return TokenLogprobs(np.asarray(model.logprobs, dtype=np.float64)[keep], offsets[keep])


def sentence_sums(model: TokenLogprobs, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence: the sum of its tokens' log-probs and its token count.

    A token belongs to the sentence holding its first character; tokens before the first
    span or at/after the last span's end belong to none.
    """
    import numpy as np  # imported on use: `dasd` starts without numpy
    n = len(spans)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    starts = np.asarray([a for a, _ in spans], dtype=np.int64)
    offsets = np.asarray(model.offsets, dtype=np.int64)
    logprobs = np.asarray(model.logprobs, dtype=np.float64)
    index = np.searchsorted(starts, offsets, side="right") - 1
    inside = (index >= 0) & (offsets < spans[-1][1])
    index, logprobs = index[inside], logprobs[inside]
    return (np.bincount(index, weights=logprobs, minlength=n),
            np.bincount(index, minlength=n).astype(np.int64))


def merge_untokenized(spans: Sequence[tuple[int, int]], sums: list[np.ndarray],
                      counts: list[np.ndarray]) -> tuple[list[tuple[int, int]], list[np.ndarray],
                                                         list[np.ndarray], int]:
    """Merge every sentence some model has no token for into a neighbour.

    Into the previous sentence, or the next one for leading sentences. Returns the new
    spans, sums and counts, and how many sentences were merged away.
    """
    import numpy as np  # imported on use: `dasd` starts without numpy
    groups: list[list[int]] = []  # indices of the original sentences in each kept one
    pending: list[int] = []  # leading sentences waiting for the first complete one
    for i in range(len(spans)):
        complete = all(c[i] > 0 for c in counts)
        if complete:
            groups.append(pending + [i])
            pending = []
        elif groups:
            groups[-1].append(i)
        else:
            pending.append(i)
    if pending:  # no sentence has tokens under every model: keep the text as one
        groups.append(pending)
    new_spans = [(spans[g[0]][0], spans[g[-1]][1]) for g in groups]
    new_sums = [np.asarray([s[g].sum() for g in groups]) for s in sums]
    new_counts = [np.asarray([c[g].sum() for g in groups], dtype=np.int64) for c in counts]
    return new_spans, new_sums, new_counts, len(spans) - len(groups)


def analyze(text: str, teacher: TokenLogprobs, student: TokenLogprobs, *,
            beta: float = DEFAULT_BETA, start: int = 0, distilled: TokenLogprobs | None = None,
            alpha: float = DEFAULT_ALPHA) -> Analysis:
    """Segment ``text[start:]``, align every model's tokens to its sentences, classify.

    ``start`` > 0 scores only the text from there on (mixed-policy records: the teacher
    wrote ``response[prefix_chars:]``); offsets are always indices into ``text``.
    """
    import numpy as np  # imported on use: `dasd` starts without numpy
    models = [teacher, student] + ([distilled] if distilled is not None else [])
    models = [in_range(m, start, len(text)) for m in models]
    spans = [(a + start, b + start) for a, b in sentence_spans(text[start:])]
    pairs = [sentence_sums(m, spans) for m in models]
    sums, counts = [p[0] for p in pairs], [p[1] for p in pairs]
    spans, sums, counts, merged = merge_untokenized(spans, sums, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_sentences = [np.exp(s / c).tolist() for s, c in zip(sums, counts)]
    p_response = [geometric_mean(m.logprobs) for m in models]
    types = [classify(pt, ps, beta) for pt, ps in zip(p_sentences[0], p_sentences[1])]
    if distilled is not None:
        types = [BOOSTED if kind == "shared" and pd - max(pt, ps) > alpha else kind
                 for kind, pt, ps, pd in zip(types, *p_sentences)]
    kinds = TYPES + ((BOOSTED,) if distilled is not None else ())
    counts_by_type = {kind: types.count(kind) for kind in kinds}
    return Analysis(spans, p_sentences, p_response, types, merged, counts_by_type)


def _r(value: float) -> float | None:
    """A probability for a record: 6 significant digits, None (JSON null) for NaN."""
    return None if math.isnan(value) else float(f"{value:.6g}")


def das_record(analysis: Analysis, *, student: str, beta: float, distilled: str | None = None,
               alpha: float | None = None, student_key: str | None = None,
               distilled_key: str | None = None) -> dict[str, Any]:
    """The ``das`` object of a scored record, exactly as DESIGN.md "Score" specifies.

    ``student`` is the model's name for people; ``student_key`` (when given) the
    fingerprint of its content, on which a later run decides whether it may reuse the
    scores. With a distilled student it also carries ``distilled`` (and
    ``distilled_key``), ``alpha``, ``p_distilled``, ``counts.boosted`` and a
    ``p_distilled`` per sentence.
    """
    has_d = distilled is not None
    sentences = []
    for i, (a, b) in enumerate(analysis.spans):
        row: dict[str, Any] = {"start": a, "end": b, "p_teacher": _r(analysis.p_sentences[0][i]),
                               "p_student": _r(analysis.p_sentences[1][i])}
        if has_d:
            row["p_distilled"] = _r(analysis.p_sentences[2][i])
        row["type"] = analysis.types[i]
        sentences.append(row)
    das: dict[str, Any] = {
        "student": student, **({"student_key": student_key} if student_key is not None else {}),
        "beta": beta, "counts": dict(analysis.counts), "score": analysis.score,
        "p_teacher": _r(analysis.p_response[0]), "p_student": _r(analysis.p_response[1]),
    }
    if has_d:
        das["distilled"] = distilled
        if distilled_key is not None:
            das["distilled_key"] = distilled_key
        das.update({"alpha": alpha, "p_distilled": _r(analysis.p_response[2])})
    das["sentences"] = sentences
    return das


def teacher_tokens(record: dict[str, Any], response: str) -> tuple[TokenLogprobs, int]:
    """The teacher's token log-probs of a teacher-sampled response record (its sampler
    block, DESIGN.md), and where its part starts.

    Raises RecordError when the record has none (scoring would be a silent zero), when
    the lists disagree, or when ``prefix_chars`` is invalid. Mixed-policy records
    (``prefix_chars`` > 0) score only ``response[prefix_chars:]``, the teacher's part.
    """
    return sampler_tokens(record, response, reason="teacher_logprobs")


def sampler_tokens(record: dict[str, Any], response: str,
                   reason: str = "sampler_logprobs") -> tuple[TokenLogprobs, int]:
    """The sampler's token log-probs of a response record and where its part starts
    (see :func:`teacher_tokens`); ``reason`` names the codes of its errors
    (``no_<reason>``, ``bad_<reason>``)."""
    from dasd_cli.errors import RecordError

    name = record.get("id", "?")
    sampler = sampler_block(record)
    logprobs = sampler.get("logprobs") if sampler is not None else None
    offsets = sampler.get("offsets") if sampler is not None else None
    if not isinstance(logprobs, list) or not isinstance(offsets, list):
        raise RecordError(f"record {name!r} has no sampler.logprobs/offsets", reason=f"no_{reason}",
                          hint="score reads `dasd sample` output (the sampling model's per-token log-probs); "
                          "APIs without log-probs cannot feed it")
    if len(logprobs) != len(offsets):
        raise RecordError(f"record {name!r}: {len(logprobs)} sampler.logprobs but {len(offsets)} offsets",
                          reason=f"bad_{reason}")
    start = record.get("prefix_chars") or 0
    if not isinstance(start, int) or not 0 <= start <= len(response):
        raise RecordError(f"record {name!r}: prefix_chars {start!r} is not in 0..{len(response)}",
                          reason="bad_field")
    if not logprobs and response[start:].strip():
        raise RecordError(f"record {name!r} has an empty sampler.logprobs for a non-empty response",
                          reason=f"no_{reason}",
                          hint="sample with log-probs enabled (every backend of `dasd sample` records them)")
    if any(not isinstance(o, int) or o < start or o > len(response) for o in offsets):
        raise RecordError(f"record {name!r}: sampler.offsets must index the response from "
                          f"prefix_chars ({start}) on", reason=f"bad_{reason}")
    return TokenLogprobs(logprobs, offsets), start


def check_logprobs_mode(record: dict[str, Any], accepted: Collection[str] = ()) -> str:
    """The record's ``sampler.logprobs_mode``; raises RecordError unless it is raw or in
    ``accepted`` (what the user said to score anyway: "processed", "unknown").

    Processed log-probs are those of the sampling distribution (temperature, top-p), not
    the model's own: their p_T is not comparable with the student's p_S.
    """
    from dasd_cli.errors import RecordError

    name = record.get("id", "?")
    sampler = sampler_block(record)
    mode = sampler.get("logprobs_mode") if sampler is not None else None
    mode = "unknown" if mode is None else mode
    if mode not in LOGPROBS_MODES:
        raise RecordError(f"record {name!r}: sampler.logprobs_mode {mode!r} is not one of "
                          f"{', '.join(LOGPROBS_MODES)}", reason="bad_teacher_logprobs")
    if mode == "raw" or mode in accepted:
        return mode
    if mode == "processed":
        why = "they are the sampling distribution's (after temperature/top-p)"
        fix = "sample again with raw log-probs"
    else:
        why = "the record does not say whether they are raw (an older file, or a server that does not tell)"
        fix = ("when the server is known to return raw ones (vLLM's default), sample with "
               "`dasd sample --server-logprobs raw`")
    raise RecordError(f"record {name!r}: sampler.logprobs_mode is {mode}, not raw: {why}",
                      reason=f"logprobs_{mode}",
                      hint=f"{fix}; or pass --accept-logprobs {mode} to score them anyway (p_T is then "
                      "not the raw distribution's that DAS compares with p_S)")
