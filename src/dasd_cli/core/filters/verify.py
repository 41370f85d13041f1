"""The correctness filter: :func:`dasd_cli.core.verify.verify_record` as a filter unit."""

from __future__ import annotations

import threading
from typing import Any

from dasd_cli.core.filters.base import Drop
from dasd_cli.core.verify import reference_kind, verify_record
from dasd_cli.core.verify.answers import MathComparer
from dasd_cli.core.verify.code import ProgramRunner


class VerifyFilter:
    """Drop responses whose final answer disagrees with the record's ``reference``.

    Records without a reference are kept and counted in ``unverified`` (the command
    reports that number); ``verified`` counts the records that were checked. Safe to
    call from several threads.
    """

    name = "verify"

    def __init__(self, *, run_program: ProgramRunner, math_timeout_s: int = 5,
                 compare_math: MathComparer | None = None) -> None:
        self.run_program = run_program  # runs code tests in isolation (dasd_cli.sandbox.run_python)
        self.compare_math = compare_math  # math comparisons off the main thread
        self.math_timeout_s = math_timeout_s  # seconds per math parse / comparison
        self.verified = 0
        self.unverified = 0
        self._count_lock = threading.Lock()

    def check(self, record: dict[str, Any]) -> Drop | None:
        checked = reference_kind(record) is not None
        with self._count_lock:
            if checked:
                self.verified += 1
            else:
                self.unverified += 1
        if not checked:
            return None
        return verify_record(record, math_timeout_s=self.math_timeout_s, run_program=self.run_program,
                             compare_math=self.compare_math)
