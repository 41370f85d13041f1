"""The package's layers, as docs/ARCHITECTURE.md draws and tabulates them, checked on the source.

The rules are read from the page itself (its picture of the layers, its table of what may
import what, its table of what core may import from outside dasd and its list of heavy
libraries), so the page and this test cannot say different things. Every ``import`` in
src/dasd_cli counts, including the ones inside functions (heavy libraries are imported
where they are used), so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dasd_cli"
PAGE = ROOT / "docs" / "ARCHITECTURE.md"


# --------------------------------------------------------------------------- the page


def sections(text: str) -> dict[str, str]:
    """The page's text by ``## `` heading ("" for what comes before the first)."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        else:
            out[current].append(line)
    return {name: "\n".join(lines) for name, lines in out.items()}


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the markdown tables in ``text`` (header and rule excluded)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the |---| rule
        rows.append(cells)
    return rows[1:] if rows else rows  # the first row of a table is its header


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def part_name(token: str) -> str:
    """``core/`` -> ``core``; ``store.py`` -> ``store``."""
    return token.rstrip("/").removesuffix(".py")


def picture(text: str) -> dict[str, int]:
    """{part: row} from the page's picture (its first fenced block), row 0 at the top."""
    block = re.search(r"```\n(.*?)```", text, re.DOTALL)
    assert block, "docs/ARCHITECTURE.md has no picture of the layers (a fenced block)"
    rows: dict[str, int] = {}
    for number, line in enumerate(block.group(1).strip("\n").splitlines()):
        for token in line.split():
            assert token not in rows, f"{token} appears twice in the picture"
            rows[part_name(token)] = number
    return rows


def allowed(text: str) -> dict[str, set[str]]:
    """{part: the parts it may import} from the page's "What may import what" table."""
    table = sections(text).get("What may import what")
    assert table, 'docs/ARCHITECTURE.md has no "## What may import what" section'
    return {part_name(row[0].strip("`")): {p.strip().strip("`") for p in row[1].split(",") if p.strip()}
            for row in table_rows(table)}


def core_rules(text: str) -> dict[str, set[str]]:
    """{"libraries", "the standard library", "never from `torch`"}: the backticked names of
    each row of the page's table of what core may import from outside dasd."""
    table = sections(text).get("What core may import from outside dasd")
    assert table, 'docs/ARCHITECTURE.md has no "## What core may import from outside dasd" section'
    return {row[0]: set(ticked(row[1])) for row in table_rows(table)}


def heavy_libraries(text: str) -> set[str]:
    """The libraries the page says are imported only inside the functions that need them."""
    section = sections(text).get("Heavy libraries")
    assert section, 'docs/ARCHITECTURE.md has no "## Heavy libraries" section'
    return {name for name in ticked(section) if re.fullmatch(r"[a-z_][a-z0-9_]*", name)}


TEXT = PAGE.read_text(encoding="utf-8")
ALLOWED = allowed(TEXT)
ROWS = picture(TEXT)
CORE = core_rules(TEXT)
HEAVY = heavy_libraries(TEXT)


# --------------------------------------------------------------------------- the source


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
            if node.module.startswith("dasd_cli") or node.module == "torch":
                # from dasd_cli import io; from dasd_cli.core import das; from torch import distributed
                found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                             if node.module == "torch" or _is_module(f"{node.module}.{alias.name}"))
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


def subpackage_edges() -> list[tuple[str, str]]:
    """(importing, imported) between two subpackages of one part (core.verify, core.filters)."""
    rows = set()
    for path in sorted(SRC.rglob("*.py")):
        here = unit_of(module_name(path))
        for _, target in imports(path):
            if target.startswith("dasd_cli.") and unit_of(target) != here:
                rows.add((here, unit_of(target)))
    return sorted(rows)


def core_violations(core: Path, rules: dict[str, set[str]]) -> list[str]:
    """What a core module imports or calls against the page's table of core's imports."""
    libraries = rules["libraries"]
    stdlib_denied = rules["the standard library"]
    torch_denied = rules["never from `torch`"]
    wrong = []
    for path in sorted(core.rglob("*.py")):
        where = path.relative_to(core.parent)
        for line, target in imports(path):
            top = target.split(".")[0]
            if top in ("dasd_cli", "__future__"):
                continue
            if top in sys.stdlib_module_names:
                if top in stdlib_denied:
                    wrong.append(f"{where}:{line}: imports {target} (a standard module core may not use)")
            elif top not in libraries:
                wrong.append(f"{where}:{line}: imports {target} (not a library core may use)")
            if any(target == t or target.startswith(t + ".") for t in torch_denied):
                wrong.append(f"{where}:{line}: imports {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                wrong.append(f"{where}:{node.lineno}: opens a file")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
                if f"torch.{node.attr}" in torch_denied:
                    wrong.append(f"{where}:{node.lineno}: uses torch.{node.attr}")
    return wrong


def eager_heavy_imports(src: Path, heavy: set[str]) -> list[str]:
    """Module-level imports of a heavy library (type-checking-only imports aside)."""
    wrong = []
    for path in sorted(src.rglob("*.py")):
        statements = list(ast.parse(path.read_text()).body)
        while statements:
            node = statements.pop(0)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                statements.extend(node.orelse)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                statements.extend(ast.iter_child_nodes(node))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                wrong.extend(f"{path.relative_to(src.parent)}:{node.lineno}: imports {name} on load"
                             for name in names if name.split(".")[0] in heavy)
    return wrong


# --------------------------------------------------------------------------- the checks


def test_the_page_names_every_part():
    parts = {part_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert parts == set(ALLOWED), (f"parts of the package missing from the table of docs/ARCHITECTURE.md: "
                                   f"{sorted(parts - set(ALLOWED))}; in the table but not in the package: "
                                   f"{sorted(set(ALLOWED) - parts)}")
    assert set(ROWS) == set(ALLOWED), (f"the picture and the table of docs/ARCHITECTURE.md name different "
                                       f"parts: {sorted(set(ROWS) ^ set(ALLOWED))}")
    unknown = {f"{a} -> {b}" for a, targets in ALLOWED.items() for b in targets if b not in ALLOWED}
    assert not unknown, f"the table allows imports of parts that do not exist: {sorted(unknown)}"


def heights(table: dict[str, set[str]]) -> dict[str, int]:
    """Each part's row counted from the bottom: 0 when it may import no part, else one more
    than the highest part it may import."""
    out: dict[str, int] = {}

    def height(part: str, path: tuple[str, ...] = ()) -> int:
        if part in path:
            pytest.fail(f"docs/ARCHITECTURE.md allows an import cycle: {' -> '.join(path + (part,))}")
        if part not in out:
            out[part] = 1 + max((height(b, path + (part,)) for b in table[part]), default=-1)
        return out[part]

    for part in table:
        height(part)
    return out


def misplaced(rows: dict[str, int], table: dict[str, set[str]]) -> list[str]:
    """Parts the picture draws on another row than the table puts them."""
    expected = heights(table)
    top = max(expected.values())
    return [f"{part} is drawn on row {rows[part]}, the table puts it on row {top - expected[part]}"
            for part in sorted(table) if rows[part] != top - expected[part]]


def test_the_picture_agrees_with_the_table():
    """Each part is drawn on the row its imports in the table give it (rows from the top)."""
    wrong = misplaced(ROWS, ALLOWED)
    assert not wrong, "docs/ARCHITECTURE.md: " + "; ".join(wrong)


def test_imports_follow_the_layers():
    wrong = [f"{where}: {a} imports {b}" for a, b, where in edges() if b not in ALLOWED[a]]
    assert not wrong, "\n".join(wrong)


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
    assert CORE.get("libraries") and CORE.get("the standard library") and CORE.get("never from `torch`"), \
        f"docs/ARCHITECTURE.md's table of core's imports is incomplete: {CORE}"
    wrong = core_violations(SRC / "core", CORE)
    assert not wrong, "\n".join(wrong)


def test_heavy_libraries_load_on_use():
    assert {"torch", "transformers", "vllm", "deepspeed"} <= HEAVY, HEAVY
    wrong = eager_heavy_imports(SRC, HEAVY)
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- the checker can fail


def test_the_checker_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The check itself can fail: a core module importing io is caught."""
    fake = tmp_path / "dasd_cli"
    (fake / "core").mkdir(parents=True)
    (fake / "io").mkdir()
    (fake / "core" / "bad.py").write_text("def f():\n    from dasd_cli.io import say\n")
    (fake / "io" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert ("core", "io", "dasd_cli/core/bad.py:2") in edges()


def test_the_checker_sees_an_impure_core(tmp_path):
    core = tmp_path / "dasd_cli" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text(
        "import numpy\nimport re\n"
        "def f():\n    import subprocess\n    import transformers\n    from torch import distributed\n"
        "    import torch\n    torch.load('x')\n    return open('y')\n")
    assert sorted(core_violations(core, CORE)) == [
        "core/bad.py:4: imports subprocess (a standard module core may not use)",
        "core/bad.py:5: imports transformers (not a library core may use)",
        "core/bad.py:6: imports torch.distributed",
        "core/bad.py:8: uses torch.load",
        "core/bad.py:9: opens a file",
    ]


def test_the_checker_sees_a_page_that_disagrees_with_itself():
    """Training drawn under backends, as if backends could import it, is caught."""
    text = TEXT.replace("backends/        training/\n", "backends/\ntraining/\n")
    assert text != TEXT
    assert "training is drawn on row 5, the table puts it on row 4" in misplaced(picture(text), allowed(text))


def test_the_checker_sees_an_eager_heavy_import(tmp_path):
    src = tmp_path / "dasd_cli"
    src.mkdir()
    (src / "bad.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                                "try:\n    import vllm\nexcept ImportError:\n    pass\n"
                                "def f():\n    import transformers\n")
    assert eager_heavy_imports(src, HEAVY) == ["dasd_cli/bad.py:5: imports vllm on load"]


def test_ignore_index_is_defined_once():
    definitions = [f"{path.relative_to(SRC)}:{node.lineno}"
                   for path in SRC.rglob("*.py")
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)]
    assert len(definitions) == 1, definitions
