"""The layer rules of DESIGN.md, read from the source: what core may import, and which
packages may import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dasd_cli"
CORE = SRC / "core"

# DESIGN.md: core imports no CLI, terminal, files, subprocesses or models; runners such as
# the sandbox are passed in.
FORBIDDEN_IN_CORE = ("dasd_cli.commands", "dasd_cli.cli", "dasd_cli.io", "dasd_cli.backends",
                     "dasd_cli.training", "dasd_cli.sandbox", "dasd_cli.report", "subprocess",
                     "typer", "rich")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_core_imports_nothing_above_it():
    offenders = sorted(f"{path.relative_to(SRC)}: {name}"
                       for path in CORE.rglob("*.py") for name in imports_of(path)
                       if any(_under(name, bad) for bad in FORBIDDEN_IN_CORE))
    assert offenders == []


def test_verify_and_filters_depend_one_way():
    """core.filters may use core.verify (the verify filter); core.verify never core.filters."""
    offenders = sorted(f"{path.relative_to(SRC)}: {name}"
                       for path in (CORE / "verify").rglob("*.py") for name in imports_of(path)
                       if _under(name, "dasd_cli.core.filters"))
    assert offenders == []


def test_ignore_index_is_defined_once():
    definitions = [f"{path.relative_to(SRC)}:{node.lineno}"
                   for path in SRC.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)]
    assert len(definitions) == 1, definitions
