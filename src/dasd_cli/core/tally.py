"""Counting what a command did, for its summary line and ``--stats``.

Invariant (DESIGN.md): read = kept + dropped + skipped, always.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """Per-command counts: records read, kept, dropped and skipped by reason."""

    command: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)  # command-specific numbers

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def skip(self, reason: str) -> None:
        """A record that could not be processed (bad JSON, missing field) under skip mode."""
        self.read += 1  # a skipped line was read even though it never became a record
        self.skipped[reason] += 1

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self, kept_word: str = "kept") -> str:
        """The one summary line, e.g. ``dasd filter: read 10, kept 8, dropped 2 (truncated 2)``."""
        parts = [f"read {self.read}", f"{kept_word} {self.kept}"]
        for label, counter in (("dropped", self.dropped), ("skipped", self.skipped)):
            total = sum(counter.values())
            if total or label == "dropped":
                detail = ", ".join(f"{k} {v}" for k, v in _by_count(counter))
                parts.append(f"{label} {total}" + (f" ({detail})" if detail else ""))
        for key, value in self.extra.items():
            if isinstance(value, (int, float, str)) and not key.startswith("_"):
                parts.append(f"{key.replace('_', ' ')} {_fmt(value)}")
        return f"dasd {self.command}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "read": self.read,
            "kept": self.kept,
            "dropped": self.dropped_total,
            "dropped_by_reason": dict(_by_count(self.dropped)),
            "skipped": self.skipped_total,
            "skipped_by_reason": dict(_by_count(self.skipped)),
            **{k: v for k, v in self.extra.items() if not k.startswith("_")},
        }


def _by_count(counter: Counter) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
