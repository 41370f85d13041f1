"""Human views of scored responses: colored sentences on a terminal, or one HTML page.

Both take scored records (with a ``das`` object, DESIGN.md "Score") and show a legend, then
every sentence of the scored part tagged by its type (``T``, ``Sh``, ``St``, ``B``: the tag
alone tells the types apart without color) with its p_T and p_S (and p_D when the record
was scored with a distilled student), colored by type where color is on, then a summary of
counts and means. The HTML page is self-contained (inline CSS and SVG, no script, nothing
fetched), so it reads the same without a network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from dasd_cli.core.provenance import sampler_block

# ANSI colors per type (terminal) and fill colors (HTML).
ANSI = {"teacher": "\x1b[32m", "shared": "\x1b[37m", "student": "\x1b[34m", "boosted": "\x1b[33m"}
FILL = {"teacher": "#c8f0c8", "shared": "#e8e8e8", "student": "#c8d8f8", "boosted": "#f8e8a8"}
_DIM, _RESET, _BOLD = "\x1b[2m", "\x1b[0m", "\x1b[1m"
TYPE_ORDER = ("teacher", "shared", "student", "boosted")
# One tag per type, distinct without color (shared and student share a first letter).
TAG = {"teacher": "T", "shared": "Sh", "student": "St", "boosted": "B"}


def _p(value: float | None) -> str:
    return "  - " if value is None else f"{value:.2f}"


def _label(record: dict[str, Any], index: int) -> str:
    return str(record.get("id", f"record {index + 1}"))


def _distilled(record: dict[str, Any]) -> bool:
    return "p_distilled" in record["das"]


def _tag(s: dict[str, Any]) -> str:
    """``[St 0.21/0.42]``: the type's tag, then p_T/p_S (and /p_D when scored with one)."""
    numbers = "/".join(_p(s[key]) for key in ("p_teacher", "p_student", "p_distilled") if key in s)
    return f"[{TAG.get(s['type'], s['type'])} {numbers}]"


def _types(record: dict[str, Any]) -> tuple[str, ...]:
    return TYPE_ORDER if _distilled(record) else TYPE_ORDER[:3]


def legend(record: dict[str, Any], *, color: bool) -> str:
    """The view's first line: each type's tag and name (in its color), and what a tag holds.
    Boosted is listed, and p_D shown, when ``record`` was scored with a distilled student."""
    names = [f"{TAG[kind]} {kind}" for kind in _types(record)]
    if color:
        names = [f"{ANSI[kind]}{name}{_RESET}" for kind, name in zip(_types(record), names)]
    numbers = "p_T/p_S/p_D" if _distilled(record) else "p_T/p_S"
    return ", ".join(names) + f"; each sentence ends in [TAG {numbers}]\n"


def terminal_view(record: dict[str, Any], index: int = 0, *, color: bool = True) -> str:
    """One record: a header, then each sentence (colored by type) tagged [TAG p_T/p_S]."""
    das = record["das"]
    response = record.get("response", "")
    counts = das.get("counts", {})
    head = (f"== {_label(record, index)}  score {das.get('score')}  "
            + "  ".join(f"{k} {v}" for k, v in counts.items())
            + f"  p_T {_p(das.get('p_teacher'))}  p_S {_p(das.get('p_student'))}"
            + (f"  p_D {_p(das['p_distilled'])}" if "p_distilled" in das else ""))
    parts = [(_BOLD + head + _RESET) if color else head, "\n"]
    sentences = das.get("sentences", [])
    if sentences and sentences[0]["start"] > 0:
        prefix = response[:sentences[0]["start"]]
        parts.append((_DIM + prefix + _RESET) if color else f"[student prefix]{prefix}")
    for s in sentences:
        text = response[s["start"]:s["end"]]
        tag = _tag(s)
        if color:
            parts.append(f"{ANSI.get(s['type'], '')}{text}{_RESET}{_DIM}{tag}{_RESET}")
        else:
            parts.append(f"{text}{tag}")
    parts.append("\n")
    return "".join(parts)


def summary_rows(records: Sequence[dict[str, Any]]) -> list[tuple[str, int, str, str]]:
    """Per type: sentence count, mean p_T, mean p_S over every sentence of ``records``."""
    rows = []
    for kind in TYPE_ORDER:
        sents = [s for r in records for s in r["das"].get("sentences", []) if s["type"] == kind]
        if not sents and kind == "boosted":
            continue
        rows.append((kind, len(sents), _mean_text([s["p_teacher"] for s in sents]),
                     _mean_text([s["p_student"] for s in sents])))
    return rows


def _mean_text(values: Sequence[float | None]) -> str:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return f"{sum(clean) / len(clean):.3f}" if clean else "-"


def terminal_summary(records: Sequence[dict[str, Any]]) -> str:
    """A small table: type, sentences, mean p_T, mean p_S; then the responses' mean score."""
    lines = [f"{'type':<8} {'sentences':>9} {'mean p_T':>9} {'mean p_S':>9}"]
    for kind, n, pt, ps in summary_rows(records):
        lines.append(f"{kind:<8} {n:>9} {pt:>9} {ps:>9}")
    scores = [r["das"].get("score", 0) for r in records]
    if scores:
        lines.append(f"{len(records)} responses, mean score (teacher sentences) "
                     f"{sum(scores) / len(scores):.2f}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
.text{white-space:pre-wrap;font-family:monospace;line-height:1.5;border:1px solid #ccc;padding:1em}
.s{border-radius:3px}.teacher{background:#c8f0c8}.shared{background:#e8e8e8}
.student{background:#c8d8f8}.boosted{background:#f8e8a8}.prefix{color:#888}
.tag{font-size:70%;color:#555}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}
.legend span{padding:0 6px;margin-right:6px}"""


def _chart(das: dict[str, Any], width: int = 900, height: int = 160) -> str:
    """Inline SVG: p_T (solid) and p_S (dashed) per sentence over type-colored bands."""
    sentences = das.get("sentences", [])
    n = len(sentences)
    if n == 0:
        return ""
    pad = 24
    step = (width - 2 * pad) / n
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="per-sentence probabilities">')]
    for i, s in enumerate(sentences):
        out.append(f'<rect x="{pad + i * step:.1f}" y="{pad / 2}" width="{step:.1f}" '
                   f'height="{height - pad * 1.5:.1f}" fill="{FILL.get(s["type"], "#fff")}">'
                   f'<title>{i + 1}: {s["type"]}</title></rect>')

    def y(p: float | None) -> float:
        return pad / 2 + (1 - (p or 0.0)) * (height - pad * 1.5)

    for key, color, dash in (("p_teacher", "#1a7f1a", ""), ("p_student", "#1a3fbf", ' stroke-dasharray="5,3"'),
                             ("p_distilled", "#b08000", ' stroke-dasharray="2,2"')):
        if key not in sentences[0]:
            continue
        points = " ".join(f"{pad + (i + 0.5) * step:.1f},{y(s[key]):.1f}" for i, s in enumerate(sentences))
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
    out.append(f'<text x="2" y="{pad / 2 + 4}" font-size="10">1</text>'
               f'<text x="2" y="{height - pad + 4}" font-size="10">0</text>'
               f'<text x="{pad}" y="{height - 4}" font-size="10">sentence 1..{n}; solid p_T, dashed p_S'
               + (", dotted p_D" if "p_distilled" in sentences[0] else "") + "</text>")
    out.append("</svg>")
    return "".join(out)


def html_record(record: dict[str, Any], index: int) -> str:
    """One record's section: header, chart, colored text with [TAG p_T/p_S] tags."""
    das = record["das"]
    response = record.get("response", "")
    counts = ", ".join(f"{k} {v}" for k, v in das.get("counts", {}).items())
    temperature = (sampler_block(record) or {}).get("temperature")
    parts = [f'<section><h2>{html.escape(_label(record, index))}</h2>',
             f'<p>score {das.get("score")} ({html.escape(counts)}); p_T {_p(das.get("p_teacher"))}, '
             f'p_S {_p(das.get("p_student"))}'
             + (f', p_D {_p(das["p_distilled"])}' if "p_distilled" in das else "")
             + (f"; teacher temperature {temperature}" if temperature is not None else "") + "</p>",
             _chart(das), '<div class="text">']
    sentences = das.get("sentences", [])
    if sentences and sentences[0]["start"] > 0:
        parts.append(f'<span class="prefix" title="student prefix, not scored">'
                     f'{html.escape(response[:sentences[0]["start"]])}</span>')
    for i, s in enumerate(sentences):
        title = f"{s['type']}: p_T {_p(s['p_teacher'])}, p_S {_p(s['p_student'])}" + (
            f", p_D {_p(s['p_distilled'])}" if "p_distilled" in s else "")
        parts.append(f'<span class="s {s["type"]}" id="r{index}s{i}" title="{title}">'
                     f'{html.escape(response[s["start"]:s["end"]])}</span>'
                     f'<span class="tag">{_tag(s)}</span>')
    parts.append("</div></section>")
    return "".join(parts)


def html_page(records: Sequence[dict[str, Any]], title: str = "dasd score --explain") -> str:
    """The whole self-contained page for a run."""
    rows = "".join(f"<tr><th>{k}</th><td>{n}</td><td>{pt}</td><td>{ps}</td></tr>"
                   for k, n, pt, ps in summary_rows(records))
    first = records[0] if records else {"das": {}}
    legend = "".join(f'<span class="{k}">{TAG[k]} {k}</span>' for k in _types(first))
    numbers = "p_T/p_S/p_D" if _distilled(first) else "p_T/p_S"
    body = "".join(html_record(r, i) for i, r in enumerate(records))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="legend">{legend}: each sentence on its type\'s color, then [TAG {numbers}]</p>'
            f"<table><tr><th>type</th><th>sentences</th><th>mean p_T</th><th>mean p_S</th></tr>{rows}</table>"
            f"{body}</body></html>\n")
