"""``dasd score --role teacher``: the teacher's log-prob of every token the student sampled.

On-policy distillation (METHOD.md section 5): the records are the student's own samples
(their ``sampler`` block holds its tokens' log-probs), and the teacher scores each of
those tokens teacher-forced. :func:`score_as_teacher` runs the session's records on the
record loop (pipeline/loop.py): :class:`TeacherScorer` decides a window at a time (adds
``teacher_scores``, core/onpolicy.py, or says why a record cannot have them), and the
loop settles each record in input order, counting teacher tokens, aligned and misaligned
records and the sampled reverse KL into the summary. A record that already holds
``teacher_scores`` of this teacher (by content key) is passed through and counted, not
scored again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dasd_cli import io
from dasd_cli.backends.base import Backend, ScoreRequest
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.onpolicy import (SampledTokens, TeacherScoreTally, aligned, check_same_tokenizer,
                                    sampled_tokens, scored_by, teacher_scores)
from dasd_cli.core.provenance import TEACHER_SCORES
from dasd_cli.errors import RecordError
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.pipeline.scoring import ScoreSession, ScoreSettings, open_backend, windows


@dataclass
class TeacherScored:
    """A record with its ``teacher_scores``, and the sampler's tokens they score."""

    record: dict[str, Any]
    sampled: SampledTokens
    scored_now: bool  # False: the record already held this teacher's scores


# What scoring a record gives: the record with its teacher_scores, or why it cannot have them.
TeacherOutcome = TeacherScored | RecordError


def score_as_teacher(session: ScoreSession, settings: ScoreSettings, *,
                     shard: tuple[int, int] | None = None,
                     notify: Callable[[str], None] | None = None) -> None:
    """Add ``teacher_scores`` to every record of ``session`` and write it, in input order;
    the summary's extra counts teacher_tokens, aligned, misaligned, kl_tokens and
    reverse_kl (core/onpolicy.py :class:`TeacherScoreTally`)."""
    scorer = TeacherScorer(settings, notify)
    tally = TeacherScoreTally()

    def settle(line: io.Line, outcome: TeacherOutcome) -> None:
        if isinstance(outcome, RecordError):
            session.bad_record(line, outcome)
            return
        block = outcome.record[TEACHER_SCORES]
        tally.add(outcome.sampled, block["logprobs"], block.get("offsets", []), scored_now=outcome.scored_now)
        session.emit(outcome.record)

    try:
        record_loop(session.tally, windows(session.records(shard=shard)), settle, scorer.score_window)
    finally:
        scorer.close()
        session.tally.extra.update(tally.summary())


class TeacherScorer:
    """Loads the teacher on first need; scores the sampled tokens of windows of records."""

    def __init__(self, settings: ScoreSettings, notify: Callable[[str], None] | None = None) -> None:
        from dasd_cli.model.load import model_key, model_name

        self.settings = settings
        self.notify = notify
        self.name, self.key = model_name(settings.model), model_key(settings.model)
        self.backend: Backend | None = None
        self.fingerprint: str | None = None  # the teacher's tokenizer fingerprint

    def _backend(self) -> Backend:
        if self.backend is None:
            if self.notify is not None:
                self.notify(f"dasd score: scoring the sampled tokens with the teacher {self.name}")
            self.backend = open_backend(self.settings.model, self.settings)
            self.fingerprint = self.backend.tokenizer_fingerprint()
        return self.backend

    def score_window(self, window: list[io.Line]) -> list[TeacherOutcome]:
        """Each record of the window with its teacher_scores (scored, or held already), or
        why it cannot have them, in input order."""
        outcomes: list[TeacherOutcome | None] = []  # None: scored below
        todo: dict[int, SampledTokens] = {}  # the records to score, by their place in the window
        requests: list[ScoreRequest] = []
        for line in window:
            record = line.record
            try:
                response = response_text(record)
                sampled = sampled_tokens(record, response, self.settings.accept_logprobs)
                if scored_by(record, self.key):
                    outcomes.append(TeacherScored(record, sampled, scored_now=False))
                    continue
                messages = prompt_messages(record, self.settings.system_prompt)
            except RecordError as err:
                outcomes.append(err)
                continue
            todo[len(outcomes)] = sampled
            requests.append(ScoreRequest(str(len(outcomes)), messages, response, sampled.response_tokens()))
            outcomes.append(None)
        if requests:
            backend = self._backend()
            for index, sampled in list(todo.items()):
                try:  # sampled with another tokenizer than the teacher's: refused
                    check_same_tokenizer(window[index].record, sampled, self.fingerprint)
                except RecordError as err:
                    outcomes[index] = err
                    del todo[index]
            kept = [request for request in requests if int(request.key) in todo]
            for scored in backend.score(kept) if kept else ():
                index = int(scored.key)
                sampled, record = todo[index], window[index].record
                record[TEACHER_SCORES] = teacher_scores(self.name, self.key, self.fingerprint, scored.logprobs,
                                                        scored.offsets, aligned(sampled.offsets, scored.offsets))
                outcomes[index] = TeacherScored(record, sampled, scored_now=True)
        done = [outcome for outcome in outcomes if outcome is not None]
        if len(done) != len(window):
            raise RuntimeError("the scoring backend returned no scores for some requests")
        return done

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
