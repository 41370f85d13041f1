"""Structure checks: a thinking part and a final answer; no tool or function calls."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dasd_cli.core.chat import response_text
from dasd_cli.core.filters.base import Drop

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Markers of a tool or function call in a response. gpt-oss harmony addresses a tool
# with a recipient ("to=functions.NAME" / "to=python") and ends a call with <|call|>;
# Hermes/Qwen-style templates wrap calls in <tool_call>; others use <function=...>.
DEFAULT_TOOL_CALL_PATTERNS: tuple[str, ...] = (
    r"<\|call\|>",
    r"\bto=(?:functions\.[\w.-]+|python|browser\.[\w.-]+|container\.[\w.-]+)",
    r"<tool_call>",
    r"</tool_call>",
    r"<function=[^>]*>",
    r"<\|tool_call(?:s_section)?_begin\|>",
)
# Every match of a default pattern contains "to=" or starts with one of these, and each of
# these contains one of the _FALLBACK literals. Substring and character searches cost far
# less than the alternation regex on long responses, so the regex only runs on a hit.
_ANGLE_LITERALS: tuple[str, ...] = ("<|call|>", "<tool_call>", "</tool_call>", "<function=",
                                    "<|tool_call")
_FALLBACK: tuple[str, ...] = ("<|call|>", "tool_call", "<function=")
_ANGLE_SCAN = 8  # "<" characters looked at one by one, before one search per literal


def _may_call(response: str) -> bool:
    """Whether ``response`` may match a default tool-call pattern (False: it cannot)."""
    if "to=" in response:
        return True
    at = response.find("<")
    for _ in range(_ANGLE_SCAN):
        if at < 0:
            return False
        if response.startswith(_ANGLE_LITERALS, at):
            return True
        at = response.find("<", at + 1)
    return at >= 0 and any(response.find(lit, at) >= 0 for lit in _FALLBACK)


def split_think(response: str) -> tuple[str, str] | None:
    """``(thinking, answer)`` of a canonical ``<think>...</think>answer`` response, or None."""
    start = response.find(THINK_OPEN)
    end = response.find(THINK_CLOSE)
    if start < 0 or end < start:
        return None
    return response[start + len(THINK_OPEN):end], response[end + len(THINK_CLOSE):]


class StructureFilter:
    """Require ``<think>`` + answer (if asked) and refuse tool calls.

    Reason codes: ``no_think``, ``unclosed_think``, ``empty_think``, ``no_answer``,
    ``nested_think``, ``tool_call``.
    """

    name = "structure"

    def __init__(self, require_think: bool = False,
                 tool_call_patterns: Sequence[str] = DEFAULT_TOOL_CALL_PATTERNS) -> None:
        self.require_think = require_think
        self.tool_call = re.compile("|".join(f"(?:{p})" for p in tool_call_patterns)) if tool_call_patterns else None
        self.prefilter = tuple(tool_call_patterns) == DEFAULT_TOOL_CALL_PATTERNS

    def check(self, record: dict[str, Any]) -> Drop | None:
        response = response_text(record)
        if record.get("tool_calls"):
            return Drop("tool_call", "record has tool_calls")
        if self.tool_call is not None and (not self.prefilter or _may_call(response)):
            found = self.tool_call.search(response)
            if found:
                return Drop("tool_call", f"tool-call marker {found.group(0)!r} at char {found.start()}")
        if self.require_think:
            return self._check_think(response)
        if not response.strip():
            return Drop("no_answer", "empty response")
        return None

    @staticmethod
    def _check_think(response: str) -> Drop | None:
        opens = response.count(THINK_OPEN)
        closes = response.count(THINK_CLOSE)
        if opens == 0 and closes == 0:
            return Drop("no_think", "no <think> block")
        if opens != closes:
            reason = "unclosed_think" if opens > closes else "nested_think"
            return Drop(reason, f"{opens} <think> vs {closes} </think>")
        if opens > 1:
            return Drop("nested_think", f"{opens} think blocks")
        parts = split_think(response)
        if parts is None:
            return Drop("unclosed_think", "</think> before <think>")
        thinking, answer = parts
        if response[:response.find(THINK_OPEN)].strip():
            return Drop("no_think", "text before <think>")
        if not thinking.strip():
            return Drop("empty_think", "the thinking part is empty")
        if not answer.strip():
            return Drop("no_answer", "nothing after </think>")
        return None
