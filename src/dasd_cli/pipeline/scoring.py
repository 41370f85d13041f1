"""Scoring records with a student (and optionally a distilled student): ``dasd score``'s driver.

:func:`score_stream` runs a command's records through a :class:`Scorer`, or takes the
``das`` each holds, and writes or counts them. :class:`Scorer` loads the backends on first need, turns each window of records into
teacher-forced score requests, and adds the ``das`` object (DESIGN.md "Score") to each
record; a record that already carries a matching ``das`` is passed through unscored.
Bad records go to the caller's session. ``role`` "teacher" (on-policy distillation) is
pipeline/teacher_scoring.py's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dasd_cli import io
from dasd_cli.backends.base import Backend, Scored, ScoreRequest
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.das import (DEFAULT_ALPHA, DEFAULT_BETA, TokenLogprobs, analyze, check_logprobs_mode,
                               das_record, teacher_tokens)
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.workers import batched

WINDOW = 128  # records scored together: room to sort by length, output still in input order

# What scoring a record gives: the record with its das, or why it cannot have one.
ScoreOutcome = dict[str, Any] | RecordError

# A record waiting for its scores: the record, the teacher's tokens, where scoring starts.
_Todo = tuple[dict[str, Any], TokenLogprobs, int]


class ScoreSession(Protocol):
    """What :func:`score_stream` reads, counts and writes through (a command's session)."""

    tally: Tally

    def records(self, inputs: list[str] | None = None,
                shard: tuple[int, int] | None = None) -> Iterator[io.Line]: ...

    def emit(self, record: dict[str, Any]) -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


@dataclass
class ScoreSettings:
    """How to score: the models, the margins and the backend's settings."""

    model: str | None = None  # the student: a folder, a .gguf file, None for the embedded default
    distilled: str | None = None  # the distilled student (provenance analysis), or None
    beta: float = DEFAULT_BETA
    alpha: float = DEFAULT_ALPHA
    backend: str = "hf"
    dtype: str = "auto"
    device: str = "auto"
    batch_tokens: int = 16384
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enforce_eager: bool = False
    keep_token_logprobs: bool = False
    system_prompt: str | None = None
    accept_logprobs: frozenset[str] = frozenset()  # sampler log-probs other than raw to score anyway
    role: str = "student"  # what the model is to the records' sampler: student (DAS) | teacher (on-policy)
    # What `dasd score` shows and reads besides (the command's; the scorer does not use them).
    explain: bool = False  # the first `limit` records sentence by sentence
    limit: int = 1
    color: str = "auto"  # auto | always | never: --explain's view colored by sentence type
    plot: str | None = None  # histograms of p_teacher and p_student to this PNG
    shard: str | None = None  # K/N: only the input records i with i mod N == K


def score_stream(session: ScoreSession, settings: ScoreSettings, *, stored_only: bool = False,
                 write_records: bool = True, stop_after: int | None = None,
                 shard: tuple[int, int] | None = None, notify: Callable[[str], None] | None = None,
                 observe: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Score the session's records (``stored_only``: take the das each holds) in input order.

    Each record goes to ``observe`` (views, plots), then is written (``write_records``) or
    only counted as kept. Reads no more than ``stop_after`` records when given. The
    summary's extra counts: sentences, teacher_sentences, merged_sentences.
    """
    extra = session.tally.extra
    extra.update({"sentences": 0, "teacher_sentences": 0, "merged_sentences": 0})
    scorer = None if stored_only else Scorer(settings, notify)

    def settle(line: io.Line, scored: ScoreOutcome) -> None:
        if isinstance(scored, RecordError):
            session.bad_record(line, scored)
            return
        das = scored["das"]
        extra["sentences"] += len(das.get("sentences", []))
        extra["teacher_sentences"] += das.get("score", 0)
        if observe is not None:
            observe(scored)
        if write_records:
            session.emit(scored)
        else:
            session.tally.keep()

    try:
        record_loop(session.tally, windows(session.records(shard=shard), stop_after), settle,
                    stored_das if scorer is None else scorer.score_window)
    finally:
        if scorer is not None:
            scorer.close()
            extra["merged_sentences"] += scorer.merged


def windows(lines: Iterable[io.Line], stop_after: int | None = None) -> Iterator[list[io.Line]]:
    """``lines`` in lists of WINDOW (the first ``stop_after`` lines only, when given)."""
    return batched(itertools.islice(lines, stop_after), WINDOW)


def stored_das(window: list[io.Line]) -> list[ScoreOutcome]:
    """The records as they are, each with the ``das`` it holds; one without is an error."""
    return [line.record if isinstance(line.record.get("das"), dict) else RecordError(
        f"record {line.record.get('id', '?')!r} has no das object (it was never scored)",
        reason="not_scored", hint="pass --model PATH to score it; --explain and --plot without "
        "--model show the scores each record holds") for line in window]


class Scorer:
    """Loads the student (and distilled) model on first need; scores windows of records."""

    def __init__(self, settings: ScoreSettings, notify: Callable[[str], None] | None = None) -> None:
        from dasd_cli.model.load import model_key, model_name

        self.settings = settings
        self.notify = notify  # told once, when a record is really scored (the model is loaded)
        self.specs = [settings.model] + ([settings.distilled] if settings.distilled is not None else [])
        self.names = [model_name(spec) for spec in self.specs]
        self.keys = [model_key(spec) for spec in self.specs]  # what reuse is decided on
        self.backends: list[Backend] = []
        self.merged = 0  # sentences merged into a neighbour (core/das.py), over the run

    def _backends(self) -> list[Backend]:
        if not self.backends:
            if self.notify is not None:
                self.notify(f"dasd score: scoring with {' and '.join(self.names)}: some records hold "
                            f"no das for this model (by content) and beta {self.settings.beta}")
            self.backends = [open_backend(spec, self.settings) for spec in self.specs]
        return self.backends

    def _reusable(self, record: dict[str, Any]) -> bool:
        """The record's das was scored by these very models (by content, not by name) with
        this beta (and alpha), and holds what this run writes."""
        das = record.get("das")
        s = self.settings
        if not isinstance(das, dict) or das.get("student_key") != self.keys[0] or das.get("beta") != s.beta:
            return False
        if len(self.keys) > 1:
            if das.get("distilled_key") != self.keys[1] or das.get("alpha") != s.alpha:
                return False
        elif "distilled" in das:
            return False
        return not s.keep_token_logprobs or "student_logprobs" in das

    def score_window(self, window: list[io.Line]) -> list[ScoreOutcome]:
        """Each record of the window with its das (scored, or reused), or why it cannot
        have one, in input order."""
        todo: dict[str, _Todo] = {}
        requests: list[ScoreRequest] = []
        outcomes: list[ScoreOutcome | None] = []  # None: scored below, in request order
        for line in window:
            record = line.record
            reuse = self._reusable(record)
            try:
                if not reuse:
                    response = response_text(record)
                    teacher, start = teacher_tokens(record, response)
                # also for a reused das: the flags of this run say what may be scored
                check_logprobs_mode(record, self.settings.accept_logprobs)
                if reuse:
                    outcomes.append(record)
                    continue
                messages = prompt_messages(record, self.settings.system_prompt)
            except RecordError as err:
                outcomes.append(err)
                continue
            key = str(len(requests))
            todo[key] = (record, teacher, start)
            requests.append(ScoreRequest(key, messages, response))
            outcomes.append(None)
        results: list[dict[str, Scored]] = [{} for _ in self.specs]
        if requests:
            for backend, into in zip(self._backends(), results):
                for scored in backend.score(requests):
                    into[scored.key] = scored
        keys = iter(range(len(requests)))
        return [self._finish(todo, str(next(keys)), results) if outcome is None else outcome
                for outcome in outcomes]

    def _finish(self, todo: dict[str, _Todo], key: str, results: list[dict[str, Scored]]) -> dict[str, Any]:
        record, teacher, start = todo[key]
        s = self.settings
        models = [TokenLogprobs(r[key].logprobs, r[key].offsets) for r in results]
        analysis = analyze(record["response"], teacher, models[0], beta=s.beta, start=start,
                           distilled=models[1] if len(models) > 1 else None, alpha=s.alpha)
        self.merged += analysis.merged
        has_distilled = len(self.names) > 1
        das = das_record(analysis, student=self.names[0], beta=s.beta, student_key=self.keys[0],
                         distilled=self.names[1] if has_distilled else None,
                         alpha=s.alpha if has_distilled else None,
                         distilled_key=self.keys[1] if has_distilled else None)
        if s.keep_token_logprobs:
            das["student_logprobs"] = [round(x, 5) for x in models[0].logprobs]
            das["student_offsets"] = list(models[0].offsets)
        record["das"] = das
        return record

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def open_backend(spec: str | None, settings: ScoreSettings) -> Backend:
    """The scoring backend of one model spec (hf or vllm)."""
    if settings.backend == "vllm":
        from dasd_cli.backends.vllm import VLLMBackend

        scorer = VLLMBackend(spec, dtype=settings.dtype, gpu_memory_utilization=settings.gpu_memory_utilization,
                             max_model_len=settings.max_model_len, enforce_eager=settings.enforce_eager)
        scorer.batch_tokens = settings.batch_tokens
        return scorer
    from dasd_cli.backends.hf import HFBackend

    return HFBackend(spec, dtype=settings.dtype, device=settings.device, batch_tokens=settings.batch_tokens)
