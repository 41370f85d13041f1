"""The tables of ``dasd eval``: plain text, markdown, or a rich table on a terminal.

Rows come from :class:`dasd_cli.core.evaluate.Summary` (one per group, then all) and,
with ``--compare``, :class:`dasd_cli.core.evaluate.Comparison`. Accuracies are shown in
percent with one decimal; ``-`` marks a number that does not exist (maj@k of code, the
standard error of one prompt, tokens without log-probs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from dasd_cli.core.evaluate import Comparison, Summary

FORMATS = ("table", "md", "none")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _interval(bounds: tuple[float, float] | None) -> str:
    """A 95% interval in percent, "[12.1, 17.4]"; ``-`` when there is none."""
    return "-" if bounds is None else f"[{_pct(bounds[0])}, {_pct(bounds[1])}]"


def metric_rows(summaries: Sequence[Summary], by: str) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the metrics table."""
    ks = sorted({k for s in summaries for k in s.pass_at})
    maj_ks = sorted({k for s in summaries if s.maj_at for k in s.maj_at if k > 1})
    per_prompt = {count for s in summaries if s.prompts for count in (s.min_samples, s.max_samples)}
    n = per_prompt.pop() if len(per_prompt) == 1 else "n"  # avg@64 when every prompt has 64
    headers = [by, "prompts", "n", f"avg@{n}", "± se", "95% CI", *(f"pass@{k}" for k in ks),
               *(f"maj@{k}" for k in maj_ks), "trunc %", "trunc 95% CI", "tokens"]
    rows = []
    for s in summaries:
        per_prompt = (str(s.min_samples) if s.min_samples == s.max_samples
                      else f"{s.min_samples}-{s.max_samples}")
        rows.append([s.group, str(s.prompts), per_prompt, _pct(s.avg), _pct(s.stderr),
                     _interval(s.avg_ci95), *(_pct(s.pass_at.get(k)) for k in ks),
                     *(_pct(s.maj_at.get(k) if s.maj_at else None) for k in maj_ks),
                     _pct(s.truncation), _interval(s.truncation_ci95),
                     "-" if s.mean_tokens is None else f"{s.mean_tokens:.0f}"])
    return headers, rows


def comparison_rows(comparisons: Sequence[Comparison], by: str, other: str
                    ) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the --compare table."""
    headers = [by, "paired", "only here", "only other", "avg", f"avg {other}", "difference", "95% CI"]
    rows = []
    for c in comparisons:
        interval = "-" if c.low is None else f"[{_signed(c.low)}, {_signed(c.high)}]"
        rows.append([c.group, str(c.prompts), str(c.only_here), str(c.only_other), _pct(c.avg),
                     _pct(c.other_avg), _signed(c.difference), interval])
    return headers, rows


def plain(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded with spaces: the first left-aligned, numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)]) + "\n"


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join([line(headers), "|" + "|".join(align) + "|", *(line(r) for r in rows)]) + "\n"


def render(tables: Sequence[tuple[str, list[str], list[list[str]]]], fmt: str) -> str:
    """Titled tables as text: ``md`` (markdown sections) or ``table`` (plain columns)."""
    parts = []
    for title, headers, rows in tables:
        if fmt == "md":
            parts.append(f"### {title}\n\n{markdown(headers, rows)}")
        else:
            parts.append(f"{title}\n{plain(headers, rows)}")
    return "\n".join(parts)


def print_rich(tables: Sequence[tuple[str, list[str], list[list[str]]]], stream: TextIO | None,
               width: int | None = None) -> None:
    """The tables as rich tables, for a terminal (``width``: the terminal's by default);
    ``stream`` None is stderr."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, stderr=stream is None, width=width)
    for title, headers, rows in tables:
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right",
                             style="bold" if i == 0 else None)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def show_tables(tables: Sequence[tuple[str, list[str], list[list[str]]]], report: str,
                report_file: str | None, quiet: bool) -> None:
    """The tables: to ``report_file``, else on stderr (rich on a terminal) unless ``quiet``."""
    from dasd_cli import io

    if report == "none":
        return
    if report_file is not None:
        io.write_text_atomic(report_file, render(tables, report))
    elif quiet:
        return
    elif report == "table" and io.stderr_is_terminal():
        print_rich(tables, None)
    else:
        io.say(render(tables, report).rstrip("\n"))
