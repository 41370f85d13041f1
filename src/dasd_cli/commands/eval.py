"""``dasd eval``: accuracy of sampled responses against their references.

Checks every response record with the verifiers of ``dasd filter --verify``, writes it
with an ``eval`` object (DESIGN.md), and ends with a table per group (``domain`` or
``--by FIELD``) and overall: avg@n, its standard error across prompts, unbiased pass@k,
maj@k, truncation rate and mean response tokens (definitions: :mod:`dasd_cli.core.evaluate`).
``--compare OTHER`` adds the paired difference in avg@n with a bootstrap interval.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Optional

import typer

from dasd_cli import io
from dasd_cli.commands import common
from dasd_cli.core.evaluate import Evaluation, compare
from dasd_cli.core.verify import Verdict, judge_record, reference_kind
from dasd_cli.errors import RecordError, UsageError
from dasd_cli.report.evaluation import FORMATS, comparison_rows, metric_rows, print_rich, render

DEFAULT_RESAMPLES = 10000


def eval_command(
    inputs: common.Inputs = None,
    by: Annotated[str, typer.Option(
        "--by", metavar="FIELD",
        help="Group the table by this record field, a dotted path such as teacher.model "
        "(missing: 'other' for domain, '(missing)' otherwise).")] = "domain",
    compare_with: Annotated[Optional[str], typer.Option(
        "--compare", metavar="OTHER",
        help="Another evaluation of the same prompts (records with 'eval', or samples to "
        "verify): report this run's avg@n minus OTHER's, paired by prompt, with a "
        "bootstrap 95 percent interval.", show_default=False)] = None,
    resamples: Annotated[int, typer.Option(
        "--resamples", metavar="B", min=1, help="Bootstrap resamples for --compare.")] = DEFAULT_RESAMPLES,
    report: Annotated[str, typer.Option(
        "--report", metavar="table|md|none",
        help="The metrics table: 'table' (rich on a terminal, plain text otherwise), "
        "'md' (markdown) or 'none'.")] = "table",
    report_file: Annotated[Optional[str], typer.Option(
        "--report-file", metavar="PATH",
        help="Write the table to PATH instead of stderr.", show_default=False)] = None,
    math_timeout: Annotated[int, typer.Option(
        "--math-timeout", min=1, metavar="SECONDS",
        help="Time limit for parsing and comparing one math answer.")] = 5,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, metavar="N",
        help="Verify N records at a time in threads (code tests in the sandbox wait on "
        "processes; 1 verifies in the main thread).")] = 1,
    seed: common.Seed = common.DEFAULT_SEED,
    output: common.Output = None,
    compress: common.Compress = "auto",
    rejects: common.Rejects = None,
    on_error: common.OnError = "fail",
    stats: common.Stats = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Score sampled responses against their references: avg@n, pass@k, maj@k, per group.

    Each record is written with an 'eval' object {correct, reason, answer}; records
    without a 'reference' pass through unchanged and are counted as unverified. The
    table goes to stderr (or --report-file), every number to --stats.
    """
    options = {"by": by, "compare": compare_with, "resamples": resamples, "report": report,
               "report_file": report_file, "math_timeout": math_timeout, "workers": workers}
    shared = common.Common(inputs=inputs, output=output, compress=compress, quiet=quiet,
                           seed=seed, stats=stats, rejects=rejects, on_error=on_error,
                           debug=debug, options=options)

    def body(session: common.Session) -> None:
        if report not in FORMATS:
            raise UsageError(f"--report must be one of {', '.join(FORMATS)}, not {report!r}")
        if report_file is not None and report == "none":
            raise UsageError("--report-file needs a table", hint="use --report table or --report md")
        if compare_with == "-":
            raise UsageError("--compare needs a file, not stdin")
        if compare_with is not None and not os.path.exists(compare_with):
            raise UsageError(f"--compare {compare_with}: no such file")  # before the long part
        path = _field_path(by)
        judge = _judge(math_timeout)
        evaluation = Evaluation()
        verified = unverified = 0
        for line, outcome in _verify_all(session.records(), judge, workers):
            if isinstance(outcome, RecordError):
                session.bad_record(line, outcome)
                continue
            if outcome is None:  # no reference: passed through, counted apart
                unverified += 1
                session.emit(line.record)
                continue
            record, verdict = line.record, outcome
            _count(evaluation, record, verdict, path)
            verified += 1
            record["eval"] = {"correct": verdict.correct, "reason": verdict.reason,
                              "answer": verdict.answer}
            session.emit(record)
        summaries = evaluation.summaries()
        tally = session.tally.extra
        tally["verified"] = verified
        tally["unverified"] = unverified
        if verified:
            tally["accuracy"] = summaries[-1].avg
        tally["evaluation"] = {"by": by, "stderr": "of avg, across prompts (sample std, ddof 1, / sqrt(prompts))",
                               "groups": [s.as_dict() for s in summaries] if verified else []}
        tables = [("accuracy (%) by " + by, *metric_rows(summaries, by))] if verified else []
        if compare_with is not None:
            other = read_other(compare_with, judge, workers, path)
            rows = compare(evaluation, other, seed=seed, resamples=resamples)
            if rows[-1].prompts == 0:
                raise UsageError(f"--compare {compare_with}: no prompt in common with the input",
                                 hint="compare evaluations of the same prompts (and the same --by groups)")
            tally["comparison"] = {"other": compare_with, "resamples": resamples, "confidence": 0.95,
                                   "groups": [c.as_dict() for c in rows]}
            tables.append((f"avg difference (this - {compare_with}), paired bootstrap",
                           *comparison_rows(rows, by, "other")))
        if tables:
            show(tables, report, report_file, quiet)

    common.run_command("eval", shared, body)


def _judge(math_timeout: int) -> Any:
    from dasd_cli.sandbox import run_python

    def judge(record: dict[str, Any]) -> Verdict | None | RecordError:
        try:
            if reference_kind(record) is not None and not isinstance(record.get("prompt_id"), str):
                raise RecordError("record has no 'prompt_id' string", reason="missing_field",
                                  hint="eval groups the samples of a prompt by prompt_id, as "
                                  "written by `dasd sample`")
            return judge_record(record, math_timeout_s=math_timeout, run_program=run_python)
        except RecordError as err:
            return err

    return judge


def _verify_all(lines: Any, judge: Any, workers: int) -> Any:
    """(line, verdict, None or the RecordError) in input order, ``workers`` at a time."""
    from dasd_cli.workers import ordered_thread_map

    for line, outcome in ordered_thread_map(lambda ln: judge(ln.record), lines, workers=workers):
        yield line, outcome


def _field_path(by: str) -> list[str]:
    parts = by.split(".")
    if not by or any(not part for part in parts):
        raise UsageError(f"--by must be a field name or dotted path (e.g. teacher.model), not {by!r}")
    return parts


def group_of(record: dict[str, Any], path: list[str]) -> str:
    """The record's value at the dotted ``path`` as table text."""
    value: Any = record
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "other" if path == ["domain"] else "(missing)"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _count(evaluation: Evaluation, record: dict[str, Any], verdict: Verdict, path: list[str]) -> None:
    teacher = record.get("teacher")
    logprobs = teacher.get("logprobs") if isinstance(teacher, dict) else None
    evaluation.add(group_of(record, path), record["prompt_id"], verdict.correct, verdict.answer,
                   votable=reference_kind(record) != "tests",
                   truncated=record.get("finish_reason") == "length",
                   tokens=len(logprobs) if isinstance(logprobs, list) else None)


def read_other(path: str, judge: Any, workers: int, field: list[str]) -> Evaluation:
    """The --compare file as an Evaluation: its 'eval' verdicts, or verified here.

    Records without a reference or an 'eval' are ignored; a malformed one is an error
    naming FILE:LINE (--on-error applies to the input, not to this file).
    """
    evaluation = Evaluation()

    def verdict_of(record: dict[str, Any]) -> Verdict | None | RecordError:
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

    for line, outcome in _verify_all(io.iter_lines(io.check_inputs([path])),
                                     verdict_of, workers):
        if isinstance(outcome, RecordError):
            raise outcome.located(line.source, line.line)
        if outcome is not None:
            _count(evaluation, line.record, outcome, field)
    return evaluation


def show(tables: list[tuple[str, list[str], list[list[str]]]], report: str,
         report_file: str | None, quiet: bool) -> None:
    """The tables: to --report-file, else on stderr (rich on a terminal) unless --quiet."""
    if report == "none":
        return
    if report_file is not None:
        io.write_text_atomic(report_file, render(tables, report))
        return
    if quiet:
        return
    if report == "table" and io.stderr_is_terminal():
        print_rich(tables, sys.stderr)
    else:
        sys.stderr.write(render(tables, report))
        sys.stderr.flush()
