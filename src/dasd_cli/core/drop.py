"""The verdict that drops a record: shared by the filters and the verifiers they wrap."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Drop:
    """A verdict to drop a record: a stable snake_case ``reason`` and a human ``detail``."""

    reason: str
    detail: str = ""
