"""Correctness against a record's ``reference`` (DESIGN.md "Prompt").

:func:`judge_record` (a verdict with the extracted answer) and :func:`verify_record` (a
drop for filters) are the entry points: stateless and safe to call from several
threads at once (code tests run through the ``run_program`` the caller passes, e.g. the
sandbox; math comparisons off the main thread through the ``compare_math`` the caller
passes, e.g. a helper process with a time limit: :mod:`dasd_cli.pipeline.verification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dasd_cli.core.chat import response_text
from dasd_cli.core.drop import Drop
from dasd_cli.core.verify.answers import MathComparer
from dasd_cli.core.verify.code import ProgramRunner
from dasd_cli.errors import RecordError

REFERENCE_KINDS = ("answer", "choice", "tests")


def reference_kind(record: dict[str, Any]) -> str | None:
    """"answer", "choice" or "tests" for a verifiable record; None without a reference."""
    reference = record.get("reference")
    if reference is None:
        return None
    if isinstance(reference, dict):
        for kind in REFERENCE_KINDS:
            if isinstance(reference.get(kind), str):
                return kind
    raise RecordError("'reference' must be an object with a string 'answer', 'choice' or 'tests'",
                      reason="bad_reference",
                      hint='e.g. {"answer": "1/2"}, {"choice": "B"} or {"tests": "assert f(1) == 2"}')


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a response compares with its reference.

    ``reason`` is "correct" or a drop reason code of :func:`verify_record`; ``answer`` is
    the final answer extracted from the response (math: the answer text; multiple choice:
    the letter), None when nothing could be extracted or for code (the program is not an
    answer one could vote on).
    """

    correct: bool
    reason: str
    answer: str | None = None
    detail: str = ""


def judge_record(record: dict[str, Any], *, math_timeout_s: int = 5,
                 run_program: ProgramRunner | None = None,
                 compare_math: MathComparer | None = None) -> Verdict | None:
    """The verdict on a record's response; None when the record has no reference.

    Reason codes: correct, wrong_answer, no_answer (nothing extractable), verify_timeout
    (math comparison too slow), no_code, tests_failed, tests_timeout, sandbox_error.
    ``run_program`` runs the program of a code reference (candidate code, then tests) in
    isolation; a record with code tests and no ``run_program`` is a ValueError.
    ``compare_math`` compares math answers within the time limit when this runs off the
    main thread (see :func:`dasd_cli.core.verify.answers.answers_match`).
    """
    kind = reference_kind(record)
    if kind is None:
        return None
    response = response_text(record)
    reference = record["reference"]
    if kind == "answer":
        from dasd_cli.core.verify.answers import ComparisonTimeout, answers_match, extract_math_answer

        answer = extract_math_answer(response)
        if answer is None:
            return Verdict(False, "no_answer", None, "no \\boxed{} or final-answer phrase in the final answer")
        try:
            if answers_match(reference["answer"], answer, timeout_s=math_timeout_s,
                             compare_elsewhere=compare_math):
                return Verdict(True, "correct", answer)
        except ComparisonTimeout as exc:
            return Verdict(False, "verify_timeout", answer, str(exc))
        return Verdict(False, "wrong_answer", answer,
                       f"answer {_clip(answer)!r}, reference {_clip(reference['answer'])!r}")
    if kind == "choice":
        from dasd_cli.core.verify.choice import extract_choice, normalize_choice

        chosen = extract_choice(response)
        if chosen is None:
            return Verdict(False, "no_answer", None, "no chosen letter in the final answer")
        expected = normalize_choice(reference["choice"])
        if chosen == expected:
            return Verdict(True, "correct", chosen)
        return Verdict(False, "wrong_answer", chosen, f"chose {chosen}, reference {expected}")
    from dasd_cli.core.verify.code import extract_code, run_tests

    if run_program is None:
        raise ValueError("verifying code tests needs run_program (e.g. dasd_cli.sandbox.run_python)")
    code = extract_code(response)
    if code is None:
        return Verdict(False, "no_code", None, "no Python code block in the final answer")
    entry_point = reference.get("entry_point")
    outcome = run_tests(code, reference["tests"], entry_point if isinstance(entry_point, str) else None,
                        run_program=run_program)
    if outcome.passed:
        return Verdict(True, "correct")
    return Verdict(False, outcome.reason, None, outcome.detail)


def verify_record(record: dict[str, Any], *, math_timeout_s: int = 5,
                  run_program: ProgramRunner | None = None,
                  compare_math: MathComparer | None = None) -> Drop | None:
    """None when the response is correct (or there is no reference); else a Drop.

    The reason codes of :func:`judge_record`, for a filter: a wrong response is dropped.
    """
    verdict = judge_record(record, math_timeout_s=math_timeout_s, run_program=run_program,
                           compare_math=compare_math)
    if verdict is None or verdict.correct:
        return None
    return Drop(verdict.reason, verdict.detail)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
