"""Drop responses the teacher did not finish (METHOD.md section 4)."""

from __future__ import annotations

from typing import Any

from dasd_cli.core.filters.base import Drop


class TruncatedFilter:
    """``finish_reason == "length"``: the teacher hit its token limit mid-answer.

    ``invert=True`` keeps only such records (reason ``finished`` for the others): the
    capped student answers of mixed-policy distillation.
    """

    name = "truncated"

    def __init__(self, invert: bool = False) -> None:
        self.invert = invert

    def check(self, record: dict[str, Any]) -> Drop | None:
        capped = record.get("finish_reason") == "length"
        if self.invert:
            return None if capped else Drop("finished", "finish_reason is not 'length'")
        return Drop("truncated", "finish_reason is 'length'") if capped else None
