"""Drop responses the teacher did not finish (METHOD.md section 4)."""

from __future__ import annotations

from typing import Any

from dasd_cli.core.filters.base import Drop


class TruncatedFilter:
    """``finish_reason == "length"``: the teacher hit its token limit mid-answer."""

    name = "truncated"

    def check(self, record: dict[str, Any]) -> Drop | None:
        if record.get("finish_reason") == "length":
            return Drop("truncated", "finish_reason is 'length'")
        return None
