"""Every citation of the project's docs resolves to a file and a heading that exist.

The code, man pages, README, examples, benchmarks and tests cite docs/DESIGN.md,
docs/METHOD.md and docs/ARCHITECTURE.md by name, e.g. DESIGN.md "Packed sequence",
METHOD.md section 2, or a markdown link such as (DESIGN.md#scale). A citation of a
missing file, heading, section number or anchor fails here, naming FILE:LINE, so a
renamed heading cannot leave a dangling reference behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CITED_DOCS = ("DESIGN", "METHOD", "ARCHITECTURE")
# Where citations live; the generated man/*.1 pages are built from man/src and the CLI's help.
SCANNED = ("src", "man/src", "examples", "bench", "tests", "docs", "README.md", "Makefile")
TEXT_SUFFIXES = {".py", ".md", ".mk", ".sh", ".sbatch", ".toml", ".txt", ".cfg"}

FILE = re.compile(r"(?:docs/)?\b(?P<doc>" + "|".join(CITED_DOCS) + r")\.md\b")
# What may follow a file name: an anchor, "section N", or one or more quoted heading names.
ANCHOR = re.compile(r"#(?P<anchor>[\w-]+)")
LEAD = re.compile(r"(?:'s)?[,:]?\s*")
SECTION = re.compile(r"sections?\s+(?P<numbers>\d+(?:\s*(?:,|and|or)\s*\d+)*)")
QUOTED = re.compile(r"\"(?P<dq>[A-Za-z0-9][^\"\n]{0,79})\"|'(?P<sq>[A-Za-z0-9][^'\n]{0,79})'")
SEPARATOR = re.compile(r"\s*(?:,|and|or)\s*")
MD_LINK = re.compile(r"\]\((?P<target>[^)\s]*)\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
CONTINUATION = re.compile(r"^\s*(?:#+\s+|\*\s+|//\s*)?")  # a comment's marker on a wrapped line


def scanned_files(root: Path = ROOT) -> list[Path]:
    """The text files that may cite the docs, in a stable order."""
    files: list[Path] = []
    for name in SCANNED:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts)
    return files


def headings(doc: Path) -> list[str]:
    """The markdown headings of ``doc`` (outside fenced code), as written."""
    found, fenced = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.append(match.group("text"))
    return found


def _plain(heading: str) -> str:
    return " ".join(heading.replace("`", "").split()).casefold()


def names(doc: Path) -> set[str]:
    """What a quoted citation may name: a heading, also without its "N. " number."""
    out = set()
    for heading in headings(doc):
        out.add(_plain(heading))
        out.add(_plain(re.sub(r"^\d+\.\s*", "", heading)))
    return out


def section_numbers(doc: Path) -> set[str]:
    return {m.group(1) for h in headings(doc) if (m := re.match(r"(\d+)\.\s", h))}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in headings(doc)}


def citations(text: str) -> Iterator[tuple[int, str, str, str]]:
    """(line, doc, kind, value) for every citation in ``text``; kind is "file", "anchor",
    "section" or "name". A citation may wrap onto the next line (also in a comment)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        following = CONTINUATION.sub("", lines[index + 1], count=1) if index + 1 < len(lines) else ""
        joined = line + " " + following
        for match in FILE.finditer(line):
            doc, rest = match.group("doc"), joined[match.end():]
            yield index + 1, doc, "file", ""
            if anchor := ANCHOR.match(rest):
                yield index + 1, doc, "anchor", anchor.group("anchor")
                continue
            rest = rest[LEAD.match(rest).end():]  # type: ignore[union-attr]
            if section := SECTION.match(rest):
                for number in re.findall(r"\d+", section.group("numbers")):
                    yield index + 1, doc, "section", number
                continue
            while quoted := QUOTED.match(rest):
                yield index + 1, doc, "name", quoted.group("dq") or quoted.group("sq")
                rest = rest[quoted.end():]
                separator = SEPARATOR.match(rest)
                if separator is None or not QUOTED.match(rest[separator.end():]):
                    break
                rest = rest[separator.end():]


def problems(files: Iterable[Path], docs: Path = DOCS, root: Path = ROOT) -> list[str]:
    """One line per citation that does not resolve: ``FILE:LINE: citation: why``."""
    wrong = []
    for path in files:
        where = path.relative_to(root) if path.is_relative_to(root) else path
        for line, doc, kind, value in citations(path.read_text(encoding="utf-8", errors="replace")):
            target = docs / f"{doc}.md"
            shown = f"{doc}.md" + {"file": "", "anchor": f"#{value}", "section": f" section {value}",
                                   "name": f' "{value}"'}[kind]
            if not target.is_file():
                wrong.append(f"{where}:{line}: {shown}: no file docs/{doc}.md")
            elif kind == "anchor" and value not in anchors(target):
                wrong.append(f"{where}:{line}: {shown}: no heading with that anchor")
            elif kind == "section" and value not in section_numbers(target):
                wrong.append(f"{where}:{line}: {shown}: no section numbered {value}")
            elif kind == "name" and _plain(value) not in names(target):
                wrong.append(f"{where}:{line}: {shown}: no such heading "
                             f"(headings: {'; '.join(headings(target))})")
    return wrong


def link_problems(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    """Markdown links to another .md file or to a heading of the same page that do not resolve."""
    wrong = []
    for path in files:
        if path.suffix != ".md":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in MD_LINK.finditer(line):
                target = match.group("target")
                if "://" in target or target.startswith("mailto:"):
                    continue
                file_part, _, anchor = target.partition("#")
                page = (path.parent / file_part).resolve() if file_part else path
                if file_part and not page.exists():
                    wrong.append(f"{path.relative_to(root)}:{number}: link {target}: no such file")
                elif anchor and page.suffix == ".md" and anchor not in anchors(page):
                    wrong.append(f"{path.relative_to(root)}:{number}: link {target}: no such heading")
    return wrong


def test_every_citation_resolves():
    wrong = problems(scanned_files())
    assert not wrong, "citations of the docs that do not resolve:\n" + "\n".join(wrong)


def test_every_markdown_link_resolves():
    wrong = link_problems(scanned_files())
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_the_citations():
    """The scanner finds the tree's citations in every form, so an empty match cannot pass."""
    found = [(doc, kind) for path in scanned_files()
             for _, doc, kind, _ in citations(path.read_text(encoding="utf-8", errors="replace"))]
    for doc in CITED_DOCS:
        assert (doc, "file") in found, f"no citation of {doc}.md found"
    for kind in ("name", "section", "anchor"):
        assert any(k == kind for _, k in found), f"no citation by {kind} found"


def test_a_wrong_citation_is_caught(tmp_path):
    """Planted citations of a missing heading, section, anchor and file are each reported."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "DESIGN.md").write_text("# Title\n\n## Records\n\n### Packed sequence\n\n```\n# not a heading\n```\n")
    (docs / "METHOD.md").write_text("# Method\n\n## 1. Temperature-scheduled learning\n")
    design, method, arch = "DESIGN" + ".md", "METHOD" + ".md", "ARCHITECTURE" + ".md"
    cited = tmp_path / "cited.py"
    cited.write_text(
        f'"""Good: {design} "Records", {design} \'Packed sequence\', {method} section 1,\n'
        f'{method} "Temperature-scheduled learning", ({design}#packed-sequence), {design}: a field.\n'
        f'Bad: {design} "Streams" and "Records", {method} section 5, ({design}#scale),\n'
        f'{design} "not a heading", {arch}.\n'
        f'# Wrapped: {method} "Temperature-scheduled\n# learning" and {design} "Packed\n# sequences".\n"""\n')
    wrong = problems([cited], docs=docs, root=tmp_path)
    assert wrong == [
        f'cited.py:3: {design} "Streams": no such heading (headings: Title; Records; Packed sequence)',
        f"cited.py:3: {method} section 5: no section numbered 5",
        f"cited.py:3: {design}#scale: no heading with that anchor",
        f'cited.py:4: {design} "not a heading": no such heading (headings: Title; Records; Packed sequence)',
        f"cited.py:4: {arch}: no file docs/{arch}",
        f'cited.py:6: {design} "Packed sequences": no such heading (headings: Title; Records; Packed sequence)',
    ]


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [bad](#nowhere) [gone](other.md) [web](https://example.org/x.md)\n")
    assert link_problems([page], root=tmp_path) == ["page.md:3: link #nowhere: no such heading",
                                                    "page.md:3: link other.md: no such file"]
