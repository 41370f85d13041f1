"""Man pages generated from the live CLI: ``python -m dasd_cli.manpages man``.

NAME, SYNOPSIS and OPTIONS come from the typer/click definitions, so they cannot drift
from ``--help``. DESCRIPTION, EXAMPLES, EXIT STATUS and any other section are written by
hand in ``man/src/<page>.md`` in a small markdown subset:

- ``## HEADING`` starts a section; a blank line starts a paragraph;
- lines indented by four spaces are a literal block (examples);
- ``- item`` lines are a bulleted list; ``**term**: text`` lines are a tagged paragraph.

A test regenerates every page and fails on a stale page, a command without a page or
hand-written source, or an option without help text.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer

from dasd_cli import __version__

DATE = "2026"  # fixed so regeneration is byte-stable


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _inline(text: str) -> str:
    """Markdown-ish inline: `code` and **bold** to roff fonts."""
    text = _escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", text)
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)


def markdown_to_roff(source: str) -> str:
    """Convert the small markdown subset of man/src pages to roff."""
    out: list[str] = []
    paragraph: list[str] = []
    in_block = False

    def flush() -> None:
        if paragraph:
            out.append(".PP")
            out.append(_inline(" ".join(paragraph)))
            paragraph.clear()

    for line in source.splitlines():
        if line.startswith("    ") and (in_block or not paragraph):
            if not in_block:
                flush()
                out.extend([".PP", ".nf", ".RS 4"])
                in_block = True
            out.append(_escape(line[4:]))
            continue
        if in_block:
            out.extend([".RE", ".fi"])
            in_block = False
        if line.startswith("## "):
            flush()
            out.append(f".SH {line[3:].strip().upper()}")
        elif not line.strip():
            flush()
        elif line.startswith("- "):
            flush()
            out.extend([".IP \\(bu 2", _inline(line[2:].strip())])
        elif re.match(r"^\*\*[^*]+\*\*:", line):
            flush()
            term, rest = line[2:].split("**:", 1)
            out.extend([".TP", f"\\fB{_escape(term)}\\fR", _inline(rest.strip())])
        else:
            paragraph.append(line.strip())
    if in_block:
        out.extend([".RE", ".fi"])
    flush()
    return "\n".join(out) + "\n"


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _option_line(param: Any) -> str:
    if _is_argument(param):
        return f"\\fI{_escape(param.metavar or param.name.upper())}\\fR"
    names = ", ".join(f"\\fB{_escape(n)}\\fR" for n in list(param.opts) + list(param.secondary_opts))
    if not param.is_flag and not param.count:
        metavar = param.metavar or "VALUE"
        names += f" \\fI{_escape(metavar)}\\fR"
    return names


def _default(param: Any) -> str:
    if _is_argument(param) or param.is_flag and not param.secondary_opts:
        return ""
    if not param.show_default and param.show_default is not None:
        return ""
    default = param.default
    if default is None or default == () or callable(default):
        return ""
    if param.is_flag:
        flag = param.opts[0] if default else (param.secondary_opts or ["off"])[0]
        return f" (default: {flag})"
    return f" (default: {default})"


def option_help(param: Any) -> str:
    return (getattr(param, "help", None) or "").strip()


def render_command(name: str, command: Any, hand_written: str) -> str:
    """One man page: generated NAME/SYNOPSIS/OPTIONS plus the hand-written sections."""
    page = f"dasd-{name}" if name else "dasd"
    short = (command.help or "").strip().split("\n")[0].rstrip(".")
    title = _escape(page.upper())
    lines = [f'.TH {title} 1 "{DATE}" "dasd {__version__}" "dasd manual"',
             ".SH NAME", f"{_escape(page)} \\- {_escape(short)}", ".SH SYNOPSIS"]
    if _is_group(command):
        lines.append("\\fBdasd\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...")
    else:
        usage = " ".join(_option_line(p) for p in command.params if _is_argument(p))
        lines.append(f"\\fBdasd {name}\\fR [\\fIOPTIONS\\fR] {usage}".rstrip())
    lines.append(".SH OPTIONS")
    for param in command.params:
        if _is_argument(param):
            help_text = getattr(param, "help", "") or ""
        else:
            help_text = option_help(param)
        lines.extend([".TP", _option_line(param), _escape(help_text + _default(param))])
    lines.extend([".TP", "\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "Show the help and exit."])
    if _is_group(command):
        lines.append(".SH COMMANDS")
        for sub_name, sub in sorted(command.commands.items()):
            lines.extend([".TP", f"\\fBdasd {sub_name}\\fR(1)",
                          _escape((sub.help or "").strip().split("\n")[0])])
    text = "\n".join(lines) + "\n" + markdown_to_roff(hand_written)
    return text


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def cli_root() -> Any:
    """The click group behind the typer app (typer may vendor its own click)."""
    from dasd_cli.cli import app

    group = typer.main.get_command(app)
    assert _is_group(group)
    return group


def generate(man_dir: Path) -> dict[str, str]:
    """Every page's text, keyed by file name (``dasd.1``, ``dasd-filter.1``...)."""
    group = cli_root()
    pages: dict[str, str] = {}
    for name, command in [("", group)] + sorted(group.commands.items()):
        page = f"dasd-{name}" if name else "dasd"
        source = man_dir / "src" / f"{page}.md"
        if not source.is_file():
            raise SystemExit(f"missing hand-written man source: {source}")
        pages[f"{page}.1"] = render_command(name, command, source.read_text())
    return pages


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    man_dir = Path(args[0] if args else "man")
    for name, text in generate(man_dir).items():
        (man_dir / name).write_text(text)
        print(f"wrote {man_dir / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
