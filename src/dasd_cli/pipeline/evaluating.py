"""``dasd eval``'s record work: verify each sample, count it into an :class:`Evaluation`.

Verification uses the verifiers of ``dasd filter --verify`` (core.verify) with the code
sandbox as their program runner and a helper process for math off the main thread, ``workers`` records at a time in threads, in input order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dasd_cli import io
from dasd_cli.core.evaluate import Evaluation
from dasd_cli.core.verify import Verdict, judge_record, reference_kind
from dasd_cli.errors import RecordError, UsageError

# What judging one record gives: its verdict, None (it has no reference), or its error.
Outcome = Verdict | None | RecordError
Judge = Callable[[dict[str, Any]], Outcome]


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
        raise UsageError(f"--by must be a field name or dotted path (e.g. teacher.model), not {by!r}")
    return parts


def group_of(record: dict[str, Any], path: list[str]) -> str:
    """The record's value at the dotted ``path`` as table text."""
    value: object = record
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "other" if path == ["domain"] else "(missing)"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def count(evaluation: Evaluation, record: dict[str, Any], verdict: Verdict, path: list[str]) -> None:
    teacher = record.get("teacher")
    logprobs = teacher.get("logprobs") if isinstance(teacher, dict) else None
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
