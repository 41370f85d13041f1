"""The layer rules of DESIGN.md, read from the source: what core may import, and which
packages may import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dasd_cli"


def test_ignore_index_is_defined_once():
    definitions = [f"{path.relative_to(SRC)}:{node.lineno}"
                   for path in SRC.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)]
    assert len(definitions) == 1, definitions
