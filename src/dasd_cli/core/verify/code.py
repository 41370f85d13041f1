"""Code answers: take the last Python block of the final answer and run the reference tests.

Reference forms (DESIGN.md "Prompt"): ``{"tests": str}`` (MBPP-style asserts that must run clean
after the candidate code) or ``{"tests": str, "entry_point": str}`` (HumanEval-style:
the tests define ``check(candidate)``, called as ``check(<entry_point>)``).
The program runs through a :data:`ProgramRunner` the caller passes (``dasd filter``: the
sandbox of :mod:`dasd_cli.sandbox`); how it ended maps to a reason code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dasd_cli.core.verify.answers import final_answer_part

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
PYTHON_TAGS = {"python", "python3", "py", ""}


class ProgramResult(Protocol):
    """How one run of a program ended (:class:`dasd_cli.sandbox.RunResult` is one)."""

    @property
    def status(self) -> str:  # "ok" (exit 0), "failed", "timeout" or "error" (could not run)
        ...

    @property
    def wall_seconds(self) -> float:
        ...

    @property
    def stderr(self) -> str:
        ...

    def last_error_line(self) -> str:
        """The line that says why it failed (the exception, usually)."""
        ...


ProgramRunner = Callable[[str], ProgramResult]
"""Runs a Python program's source in isolation, with limits, e.g. ``dasd_cli.sandbox.run_python``."""


def extract_code(response: str) -> str | None:
    """The last fenced Python (or untagged) code block of the final answer, or None."""
    blocks = [m.group(2) for m in _FENCE.finditer(final_answer_part(response))
              if m.group(1).lower() in PYTHON_TAGS]
    for block in reversed(blocks):
        if block.strip():
            return block
    return None


def build_program(code: str, tests: str, entry_point: str | None = None) -> str:
    """The candidate code, then the tests, then ``check(entry_point)`` for HumanEval style."""
    program = f"{code.rstrip()}\n\n\n{tests.rstrip()}\n"
    if entry_point:
        program += f"\n\ncheck({entry_point})\n"
    return program


@dataclass(frozen=True)
class TestOutcome:
    """The verdict of running the tests: passed, or a reason code and a short detail."""

    __test__ = False  # not a pytest class
    passed: bool
    reason: str = ""  # tests_failed | tests_timeout | sandbox_error
    detail: str = ""


def run_tests(code: str, tests: str, entry_point: str | None = None, *,
              run_program: ProgramRunner) -> TestOutcome:
    """Run ``tests`` against ``code`` with ``run_program``."""
    result = run_program(build_program(code, tests, entry_point))
    if result.status == "ok":
        return TestOutcome(True)
    if result.status == "timeout":
        return TestOutcome(False, "tests_timeout", f"no result after {result.wall_seconds:.1f} s")
    if result.status == "error":
        return TestOutcome(False, "sandbox_error", result.stderr[:200])
    return TestOutcome(False, "tests_failed", result.last_error_line())
