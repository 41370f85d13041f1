"""Correctness against a record's ``reference`` (DESIGN.md, Prompt record).

:func:`verify_record` is the one entry point: stateless and safe to call from several
threads at once (code tests run through the ``run_program`` the caller passes, e.g. the
sandbox of :mod:`dasd_cli.sandbox`; math comparisons off the main thread run in a helper
process with a time limit).
"""

from __future__ import annotations

from typing import Any

from dasd_cli.core.chat import response_text
from dasd_cli.core.drop import Drop
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


def verify_record(record: dict[str, Any], *, math_timeout_s: int = 5,
                  run_program: ProgramRunner | None = None) -> Drop | None:
    """None when the response is correct (or there is no reference); else a Drop.

    Reason codes: wrong_answer, no_answer (nothing extractable), verify_timeout (math
    comparison too slow), no_code, tests_failed, tests_timeout, sandbox_error.
    ``run_program`` runs the program of a code reference (candidate code, then tests) in
    isolation; a record with code tests and no ``run_program`` is a ValueError.
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
            return Drop("no_answer", "no \\boxed{} or final-answer phrase in the final answer")
        try:
            if answers_match(reference["answer"], answer, timeout_s=math_timeout_s):
                return None
        except ComparisonTimeout as exc:
            return Drop("verify_timeout", str(exc))
        return Drop("wrong_answer", f"answer {_clip(answer)!r}, reference {_clip(reference['answer'])!r}")
    if kind == "choice":
        from dasd_cli.core.verify.choice import extract_choice, normalize_choice

        chosen = extract_choice(response)
        if chosen is None:
            return Drop("no_answer", "no chosen letter in the final answer")
        expected = normalize_choice(reference["choice"])
        return None if chosen == expected else Drop("wrong_answer", f"chose {chosen}, reference {expected}")
    from dasd_cli.core.verify.code import extract_code, run_tests

    if run_program is None:
        raise ValueError("verifying code tests needs run_program (e.g. dasd_cli.sandbox.run_python)")
    code = extract_code(response)
    if code is None:
        return Drop("no_code", "no Python code block in the final answer")
    entry_point = reference.get("entry_point")
    outcome = run_tests(code, reference["tests"], entry_point if isinstance(entry_point, str) else None,
                        run_program=run_program)
    return None if outcome.passed else Drop(outcome.reason, outcome.detail)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
