"""``dasd eval``'s record work: verify each sample, count it into an :class:`Evaluation`.

Verification uses the verifiers of ``dasd filter --verify`` (core.verify) with the code
sandbox as their program runner and a helper process for math off the main thread,
``workers`` records at a time in threads, in input order. :func:`evaluate_records` then
reports the metrics per group (and against ``--compare``) in --stats and as tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dasd_cli import io
from dasd_cli.core.evaluate import Evaluation, compare
from dasd_cli.core.provenance import LEGACY_SAMPLER, SAMPLER, sampler_block
from dasd_cli.core.tally import Tally
from dasd_cli.core.verify import Verdict, judge_record, reference_kind
from dasd_cli.errors import RecordError, UsageError
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.report.evaluation import comparison_rows, metric_rows, show_tables
from dasd_cli.workers import batched

# What judging one record gives: its verdict, None (it has no reference), or its error.
Outcome = Verdict | None | RecordError
Judge = Callable[[dict[str, Any]], Outcome]


@dataclass
class EvalSettings:
    """What ``dasd eval`` reports and how: its flags, every one given (the command builds it)."""

    by: str  # the record field (a dotted path) the table groups by
    compare: str | None  # another evaluation of the same prompts, to report the difference to
    resamples: int  # bootstrap resamples of every interval
    report: str  # the table's format: table | md | none
    report_file: str | None  # where the table goes instead of stderr
    math_timeout: int  # seconds per math comparison
    workers: int  # records verified at a time, in threads


class EvalSession(Protocol):
    """What :func:`evaluate_records` needs of a command's session."""

    tally: Tally

    def records(self) -> Iterator[io.Line]: ...

    def emit(self, record: dict[str, Any]) -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def evaluate_records(session: EvalSession, settings: EvalSettings, *, seed: int, quiet: bool) -> None:
    """Verify every record of ``session`` and write it with its ``eval`` object, in input
    order; then the metrics per group (and the comparison) in --stats and as tables.

    ``seed`` seeds the bootstrap intervals; ``quiet`` keeps the table off stderr.
    """
    s = settings
    path = field_path(s.by)
    judge = judge_with(s.math_timeout)
    evaluation = Evaluation()
    tally = session.tally.extra
    tally.update(verified=0, unverified=0)

    def settle(line: io.Line, outcome: Outcome) -> None:
        if isinstance(outcome, RecordError):
            session.bad_record(line, outcome)
        elif outcome is None:  # no reference: passed through, counted apart
            tally["unverified"] += 1
            session.emit(line.record)
        else:
            count(evaluation, line.record, outcome, path)
            tally["verified"] += 1
            line.record["eval"] = {"correct": outcome.correct, "reason": outcome.reason,
                                   "answer": outcome.answer}
            session.emit(line.record)

    record_loop(session.tally, batched(session.records(), 1), settle,
                lambda batch: [judge(line.record) for line in batch], workers=s.workers)
    summaries = evaluation.summaries(seed=seed, resamples=s.resamples)
    verified = tally["verified"]
    if verified:
        tally["accuracy"] = summaries[-1].avg
    tally["evaluation"] = {"by": s.by, "stderr": "of avg, across prompts (sample std, ddof 1, / sqrt(prompts))",
                           "groups": [summary.as_dict() for summary in summaries] if verified else []}
    tables = [("accuracy (%) by " + s.by, *metric_rows(summaries, s.by))] if verified else []
    if s.compare is not None:
        other = read_other(s.compare, judge, s.workers, path)
        rows = compare(evaluation, other, seed=seed, resamples=s.resamples)
        if rows[-1].prompts == 0:
            raise UsageError(f"--compare {s.compare}: no prompt in common with the input",
                             hint="compare evaluations of the same prompts (and the same --by groups)")
        tally["comparison"] = {"other": s.compare, "resamples": s.resamples, "confidence": 0.95,
                               "groups": [row.as_dict() for row in rows]}
        tables.append((f"avg difference (this - {s.compare}), paired bootstrap",
                       *comparison_rows(rows, s.by, "other")))
    if tables:
        show_tables(tables, s.report, s.report_file, quiet)


def judge_with(math_timeout: int) -> Judge:
    """The judge of ``dasd eval``: the verifiers of core.verify, with the code sandbox and
    the math helper process as their runners."""
    from dasd_cli.pipeline.verification import compare_in_helper, run_program

    def judge(record: dict[str, Any]) -> Outcome:
        try:
            if reference_kind(record) is not None and not isinstance(record.get("prompt_id"), str):
                raise RecordError("record has no 'prompt_id' string", reason="missing_field",
                                  hint="eval groups the samples of a prompt by prompt_id, as "
                                  "written by `dasd sample`")
            return judge_record(record, math_timeout_s=math_timeout, run_program=run_program,
                                compare_math=compare_in_helper)
        except RecordError as err:
            return err

    return judge


def verify_all(lines: Iterable[io.Line], judge: Judge, workers: int) -> Iterator[tuple[io.Line, Outcome]]:
    """(line, its outcome) in input order, judged ``workers`` at a time."""
    from dasd_cli.workers import ordered_thread_map

    yield from ordered_thread_map(lambda ln: judge(ln.record), lines, workers=workers)


def field_path(by: str) -> list[str]:
    parts = by.split(".")
    if not by or any(not part for part in parts):
        raise UsageError(f"--by must be a field name or dotted path (e.g. sampler.model), not {by!r}")
    return parts


def group_of(record: dict[str, Any], path: list[str]) -> str:
    """The record's value at the dotted ``path`` as table text. A path into the sampler
    block finds it under either name (``sampler``, or ``teacher`` in earlier files)."""
    value: object = record
    if path[0] in (SAMPLER, LEGACY_SAMPLER) and path[0] not in record:
        value, path = sampler_block(record), path[1:]
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "other" if path == ["domain"] else "(missing)"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def count(evaluation: Evaluation, record: dict[str, Any], verdict: Verdict, path: list[str]) -> None:
    sampler = sampler_block(record)
    logprobs = sampler.get("logprobs") if sampler is not None else None
    evaluation.add(group_of(record, path), record["prompt_id"], verdict.correct, verdict.answer,
                   votable=reference_kind(record) != "tests",
                   truncated=record.get("finish_reason") == "length",
                   tokens=len(logprobs) if isinstance(logprobs, list) else None)


def read_other(path: str, judge: Judge, workers: int, field: list[str]) -> Evaluation:
    """The --compare file as an Evaluation: its 'eval' verdicts, or verified here.

    Records without a reference or an 'eval' are ignored; a malformed one is an error
    naming FILE:LINE (--on-error applies to the input, not to this file).
    """
    evaluation = Evaluation()

    def verdict_of(record: dict[str, Any]) -> Outcome:
        given = record.get("eval")
        if given is None:
            return judge(record)
        if not (isinstance(given, dict) and isinstance(given.get("correct"), bool)
                and isinstance(given.get("answer", None), (str, type(None)))):
            return RecordError("'eval' must be an object with a boolean 'correct' and a string "
                               "or null 'answer'", reason="bad_eval")
        if not isinstance(record.get("prompt_id"), str):
            return RecordError("record has no 'prompt_id' string", reason="missing_field")
        return Verdict(given["correct"], str(given.get("reason", "")), given.get("answer"))

    for line, outcome in verify_all(io.iter_lines(io.check_inputs([path])),
                                     verdict_of, workers):
        if isinstance(outcome, RecordError):
            raise outcome.located(line.source, line.line)
        if outcome is not None:
            count(evaluation, line.record, outcome, field)
    return evaluation
