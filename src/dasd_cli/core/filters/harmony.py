"""Rewrite gpt-oss "harmony" output into the canonical ``<think>...</think>answer`` form.

Harmony writes each assistant message on a channel::

    <|channel|>analysis<|message|>REASONING<|end|><|start|>assistant<|channel|>final<|message|>ANSWER<|return|>

and servers that strip special tokens leave ``analysisREASONINGassistantfinalANSWER``.
Analysis (and commentary without a tool recipient) becomes the thinking part, the final
channel the answer. The teacher's per-token log-probs and offsets are carried over: a
token that starts inside kept text moves with it; tokens of the delimiters are dropped.
"""

from __future__ import annotations

import re
from typing import Any

from dasd_cli.core.provenance import sampler_name

_MESSAGE = re.compile(
    r"(?:<\|start\|>assistant)?<\|channel\|>(?P<channel>\w+)(?P<header>[^<]*)"
    r"(?:<\|constrain\|>[^<]*)?<\|message\|>(?P<body>.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.DOTALL)
_STRIPPED = re.compile(r"\Aanalysis(?P<analysis>.*?)assistantfinal(?P<final>.*)\Z", re.DOTALL)

# (source start, source end, destination start): a kept piece of the original text.
Segment = tuple[int, int, int]


def normalize_harmony_text(text: str) -> tuple[str, list[Segment]] | None:
    """The canonical text and the kept segments, or None when ``text`` is not harmony."""
    thinking: list[tuple[int, int]] = []
    final: list[tuple[int, int]] = []
    if "<|channel|>" in text:
        for match in _MESSAGE.finditer(text):
            span = match.span("body")
            channel = match.group("channel")
            if channel == "final":
                final.append(span)
            elif channel == "analysis" or (channel == "commentary" and "to=" not in match.group("header")):
                thinking.append(span)
    else:
        stripped = _STRIPPED.match(text)
        if stripped is None:
            return None
        thinking.append(stripped.span("analysis"))
        final.append(stripped.span("final"))
    out: list[str] = ["<think>\n"]
    segments: list[Segment] = []
    pos = len(out[0])

    def keep(spans: list[tuple[int, int]], joiner: str) -> None:
        nonlocal pos
        for i, (start, end) in enumerate(spans):
            if i:
                out.append(joiner)
                pos += len(joiner)
            segments.append((start, end, pos))
            out.append(text[start:end])
            pos += end - start

    keep(thinking, "\n\n")
    closing = "\n</think>\n\n"
    out.append(closing)
    pos += len(closing)
    keep(final, "\n\n")
    return "".join(out), segments


def normalize_harmony(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with a canonical ``response``, log-probs/offsets remapped."""
    response = record.get("response")
    if not isinstance(response, str):
        return record
    result = normalize_harmony_text(response)
    if result is None:
        return record
    text, segments = result
    out = dict(record)
    out["response"] = text
    name = sampler_name(record)  # the block keeps its name (a legacy file's "teacher")
    if name is not None and isinstance(record[name].get("offsets"), list):
        sampler = record[name]
        logprobs, offsets = remap_tokens(sampler.get("logprobs") or [], sampler["offsets"], segments)
        out[name] = {**sampler, "logprobs": logprobs, "offsets": offsets}
    return out


def remap_tokens(logprobs: list[float], offsets: list[int],
                 segments: list[Segment]) -> tuple[list[float], list[int]]:
    """Keep the tokens that start inside a kept segment, at their new offsets."""
    new_logprobs: list[float] = []
    new_offsets: list[int] = []
    seg = 0
    for logprob, offset in zip(logprobs, offsets):
        while seg < len(segments) and offset >= segments[seg][1]:
            seg += 1
        if seg == len(segments):
            break
        start, _end, dest = segments[seg]
        if offset >= start:
            new_logprobs.append(logprob)
            new_offsets.append(dest + offset - start)
    return new_logprobs, new_offsets
