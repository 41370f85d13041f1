"""Response quality control (METHOD.md section 4): one small unit per check.

Each filter has a ``name`` (the ``by`` of a rejection) and ``check(record)`` that returns
``None`` to keep the record or a :class:`Drop` with a stable snake_case reason code.
"""

from dasd_cli.core.filters.base import Drop, Filter, first_drop

__all__ = ["Drop", "Filter", "first_drop"]
