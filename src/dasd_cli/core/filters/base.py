"""The filter unit: keep, or drop with a reason code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dasd_cli.core.drop import Drop

__all__ = ["Drop", "Filter", "first_drop"]


class Filter(Protocol):
    """A response check. ``check`` may raise RecordError when a needed field is missing."""

    name: str

    def check(self, record: dict[str, Any]) -> Drop | None:
        ...


def first_drop(filters: Sequence[Filter], record: dict[str, Any]) -> tuple[str, Drop] | None:
    """Run filters in order (cheapest first); return the first (filter name, Drop), if any."""
    for flt in filters:
        verdict = flt.check(record)
        if verdict is not None:
            return flt.name, verdict
    return None
