"""The earlier source a bench compares against: ``DASD_BENCH_BEFORE``, a ``src`` folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def before_module(relative: str) -> ModuleType | None:
    """The module file ``relative`` (e.g. ``dasd_cli/core/pack.py``) of DASD_BENCH_BEFORE,
    loaded on its own under the name ``before_<stem>`` (the rest of the package stays the
    current one); None when DASD_BENCH_BEFORE is not set."""
    before = os.environ.get("DASD_BENCH_BEFORE")
    if not before:
        return None
    name = "before_" + Path(relative).stem
    spec = importlib.util.spec_from_file_location(name, Path(before) / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
