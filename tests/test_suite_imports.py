"""The test suite's own layering: a test file imports what it shares from helpers.py (or a
support module such as moe_models.py), never from another test file or from conftest.py,
whose fixtures pytest hands out by name."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def forbidden_imports(path: Path) -> list[str]:
    """``FILE:LINE imports MODULE`` for every import (at any depth) of a test_*.py module
    or of conftest in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            top = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
            if top.startswith("test_") or top == "conftest":
                found.append(f"{path.name}:{node.lineno} imports {name}")
    return found


def test_no_test_file_imports_another_or_conftest():
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 40
    bad = [hit for path in files for hit in forbidden_imports(path)]
    assert bad == [], "move what is shared to tests/helpers.py: " + "; ".join(bad)


def test_the_check_sees_every_form_of_import(tmp_path):
    source = tmp_path / "test_example.py"
    source.write_text("import test_a\nimport tests.test_b as b\nfrom test_c import x\n"
                      "def f():\n    from conftest import y\n"
                      "from helpers import z\nfrom dasd_cli import io\nfrom . import test_d\n")
    assert forbidden_imports(source) == ["test_example.py:1 imports test_a", "test_example.py:2 imports tests.test_b",
                                         "test_example.py:3 imports test_c", "test_example.py:5 imports conftest"]
