"""Man pages are generated from the live CLI and must not drift (``make man``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasd_cli import manpages

MAN = Path(__file__).resolve().parents[1] / "man"


def test_every_page_is_current() -> None:
    pages = manpages.generate(MAN)
    for name, text in pages.items():
        path = MAN / name
        assert path.is_file(), f"{name} missing: run `make man`"
        assert path.read_text() == text, f"{name} is stale: run `make man`"


def test_every_command_has_a_page() -> None:
    group = manpages.cli_root()
    for name in group.commands:
        assert (MAN / "src" / f"dasd-{name}.md").is_file(), f"dasd {name} has no man/src page"
        assert (MAN / f"dasd-{name}.1").is_file()
    stray = {p.stem for p in MAN.glob("dasd-*.1")} - {f"dasd-{n}" for n in group.commands}
    assert not stray, f"pages for commands that do not exist: {stray}"


def test_every_option_has_help() -> None:
    group = manpages.cli_root()
    for name, command in group.commands.items():
        assert (command.help or "").strip(), f"dasd {name} has no help text"
        for param in command.params:
            assert (param.help or "").strip(), f"dasd {name}: {param.name} has no help text"


@pytest.mark.parametrize("section", ["DESCRIPTION", "EXAMPLES", "EXIT STATUS"])
def test_hand_written_sections_present(section: str) -> None:
    group = manpages.cli_root()
    for name in group.commands:
        text = (MAN / f"dasd-{name}.1").read_text()
        assert f".SH {section}" in text, f"dasd-{name}.1 lacks {section}"


def test_markdown_subset_converts() -> None:
    roff = manpages.markdown_to_roff("## EXAMPLES\nSome `code` here.\n\n    dasd filter -o x\n\n- item\n")
    assert ".SH EXAMPLES" in roff and "\\fBcode\\fR" in roff
    assert ".nf" in roff and "dasd filter \\-o x" in roff and ".IP \\(bu 2" in roff
