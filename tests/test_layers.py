"""The package's layers (docs/ARCHITECTURE.md): what may import what, checked on the source.

Every ``import`` in src/dasd_cli counts, including the ones inside functions (heavy
libraries are imported where they are used), so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dasd_cli"

# Each part of the package and the parts it may import (besides itself). Top to bottom.
ALLOWED: dict[str, set[str]] = {
    "cli": {"commands", "io", "interrupts", "__init__"},
    "manpages": {"cli", "__init__"},
    "commands": {"pipeline", "backends", "training", "model", "report", "core", "io", "store",
                 "workers", "sandbox", "errors", "interrupts", "__init__"},
    "pipeline": {"backends", "model", "report", "core", "io", "store", "workers", "sandbox",
                 "errors", "interrupts"},
    "training": {"model", "core", "io", "store", "errors", "interrupts", "__init__"},
    "backends": {"model", "core", "errors", "interrupts"},
    "model": {"core", "store", "errors"},
    "report": {"core", "io", "errors"},
    "core": {"errors"},
    "io": {"errors", "interrupts"},
    "store": {"errors"},
    "workers": set(),
    "sandbox": {"errors"},
    "errors": set(),
    "interrupts": set(),
    "__init__": set(),
}

# What core may not import at all: no CLI, terminal, files, processes or models.
CORE_NEVER = {"typer", "click", "rich", "subprocess", "multiprocessing", "socket", "shutil",
              "tempfile", "transformers", "vllm", "deepspeed", "requests", "urllib", "http"}


def part_of(module: str) -> str:
    """``dasd_cli.core.das`` -> ``core``; ``dasd_cli`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module.startswith("dasd_cli"):  # from dasd_cli import io; from dasd_cli.core import das
                found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                             if _is_module(f"{node.module}.{alias.name}"))
    return found


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit_of(module: str) -> str:
    """A part's direct subpackage (``dasd_cli.core.verify.code`` -> ``dasd_cli.core.verify``)."""
    parts = module.split(".")
    if len(parts) > 2 and SRC.parent.joinpath(*parts[:3]).is_dir():
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def edges() -> list[tuple[str, str, str]]:
    """(importing part, imported part, where) for every import between two parts."""
    rows = []
    for path in sorted(SRC.rglob("*.py")):
        here = part_of(module_name(path))
        for line, target in imports(path):
            if target == "dasd_cli" or not target.startswith("dasd_cli."):
                continue
            there = part_of(target)
            if there != here:
                rows.append((here, there, f"{path.relative_to(SRC.parent)}:{line}"))
    return rows


def test_every_part_is_known():
    parts = {part_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED and docs/ARCHITECTURE.md"


def test_imports_follow_the_layers():
    wrong = [f"{where}: {a} imports {b}" for a, b, where in edges() if b not in ALLOWED[a]]
    assert not wrong, "\n".join(wrong)


def subpackage_edges() -> list[tuple[str, str]]:
    """(importing, imported) between two subpackages of one part (core.verify, core.filters)."""
    rows = set()
    for path in sorted(SRC.rglob("*.py")):
        here = unit_of(module_name(path))
        for _, target in imports(path):
            if target.startswith("dasd_cli.") and unit_of(target) != here:
                rows.add((here, unit_of(target)))
    return sorted(rows)


@pytest.mark.parametrize("level", ["parts", "subpackages"])
def test_no_cycle(level):
    graph: dict[str, set[str]] = {}
    for a, b, *_ in (edges() if level == "parts" else subpackage_edges()):
        graph.setdefault(a, set()).add(b)
    seen: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [node, nxt]
                                                         if nxt in path else path + [node, nxt]))
            if nxt not in seen:
                visit(nxt, path + [node])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [])


def test_core_is_pure():
    wrong = []
    for path in sorted((SRC / "core").rglob("*.py")):
        for line, target in imports(path):
            if target.split(".")[0] in CORE_NEVER:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: imports {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                wrong.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: opens a file")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The check itself can fail: a core module importing io is caught."""
    fake = tmp_path / "dasd_cli"
    (fake / "core").mkdir(parents=True)
    (fake / "io").mkdir()
    (fake / "core" / "bad.py").write_text("def f():\n    from dasd_cli.io import say\n")
    (fake / "io" / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert ("core", "io", "dasd_cli/core/bad.py:2") in edges()


def test_ignore_index_is_defined_once():
    definitions = [f"{path.relative_to(SRC)}:{node.lineno}"
                   for path in SRC.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)]
    assert len(definitions) == 1, definitions
