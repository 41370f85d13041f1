"""The one error type of dasd.

Every failure a user can cause or fix is a :class:`DasdError`: a message, an optional
hint that says the fix, and where it happened (file and line). The entry point prints it
as ``dasd CMD: error: MESSAGE (FILE:LINE)`` followed by the hint, and exits 1 (2 for a
:class:`UsageError`). Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations


class DasdError(Exception):
    """A runtime or data error: exit status 1."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.source = source
        self.line = line

    def located(self, source: str | None, line: int | None) -> DasdError:
        """Fill in the location if the raiser did not know it."""
        if self.source is None:
            self.source = source
        if self.line is None:
            self.line = line
        return self

    def where(self) -> str:
        if self.source is None:
            return ""
        return f" ({self.source}:{self.line})" if self.line is not None else f" ({self.source})"

    def render(self, command: str) -> str:
        text = f"dasd {command}: error: {self.message}{self.where()}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UsageError(DasdError):
    """A bad flag, value or configuration: exit status 2."""

    exit_code = 2


class RecordError(DasdError):
    """One record is unusable (malformed JSON, a missing field).

    Under ``--on-error skip`` it becomes a counted skip instead of a stop.
    """

    def __init__(self, message: str, reason: str, hint: str | None = None,
                 source: str | None = None, line: int | None = None) -> None:
        super().__init__(message, hint=hint, source=source, line=line)
        self.reason = reason
