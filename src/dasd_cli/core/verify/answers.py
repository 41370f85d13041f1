"""Math answers: extract the final answer of a response and compare it with math-verify.

Extraction looks only at the final answer part (after the last ``</think>``, when there
is one): the last ``\\boxed{...}`` (or ``\\fbox``), else the last "final answer is X" /
"answer: X" phrase, else the number after the last ``=`` ("6 + 7 = 13"), the way short
answers without a box state their result. Comparison parses both sides with math-verify, so equivalent forms
agree: ``1/2``, ``0.5`` and ``\\frac{1}{2}``; ``x^2+1`` and ``1+x^2``; ``1,000`` and ``1000``.

math-verify guards its parsing with SIGALRM, which only works on the main thread. On the
main thread we use it; on any other thread the caller passes a comparer that enforces the
limit elsewhere (a helper process: see :func:`answers_match`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

THINK_END = "</think>"
MAX_ANSWER_CHARS = 2000  # longer "answers" are extraction accidents, and slow for sympy
DEFAULT_TIMEOUT_S = 5  # per parse / comparison (seconds)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The final answer is X", "Answer: X", "**Final Answer:** X" (X runs to the end of the line)
_PHRASES = re.compile(r"\banswer\b[*\s]*(?:is\b[*\s:]*|[:=][*\s]*)([^\n]+)", re.IGNORECASE)
# "... = 13", "= $1,250.50" (the right-hand side of the last equation, a plain number)
_EQUALS_NUMBER = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?![\d.]*\s*[-+*/^])")


def final_answer_part(response: str) -> str:
    """The text after the last ``</think>``, or the whole response without one."""
    cut = response.rfind(THINK_END)
    return response[cut + len(THINK_END):] if cut >= 0 else response


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` with balanced braces, or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, min(len(text), start + MAX_ANSWER_CHARS)):
            char = text[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def extract_math_answer(response: str) -> str | None:
    """The final math answer of a response as LaTeX-ish text, or None if there is none."""
    text = final_answer_part(response)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = list(_PHRASES.finditer(text))
    if not phrases:
        equations = list(_EQUALS_NUMBER.finditer(text))
        return equations[-1].group(1) if equations else None
    answer = phrases[-1].group(1)
    for _ in range(2):  # "**$\\frac{1}{2}$**." -> "\\frac{1}{2}"
        answer = re.sub(r"[.\s*]+$", "", answer).lstrip("*").strip().strip("$").strip()
        if answer.startswith("\\(") and answer.endswith("\\)"):
            answer = answer[2:-2].strip()
    return answer[:MAX_ANSWER_CHARS] or None


# --------------------------------------------------------------------------- comparing

def compare(gold: str, predicted: str, timeout_s: int | None) -> bool:
    """math-verify's verdict on two answers (its own SIGALRM limits only on the main thread)."""
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout_s)
    pred_parsed = parse("\\boxed{" + predicted + "}", parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == predicted.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


class ComparisonTimeout(Exception):
    """The comparison ran past its time limit."""


MathComparer = Callable[[str, str, int], bool]
"""Compares two answers off the main thread within a time limit, raising ComparisonTimeout
(e.g. ``dasd_cli.pipeline.verification.compare_in_helper``: a helper process)."""


def answers_match(gold: str, predicted: str, timeout_s: int = DEFAULT_TIMEOUT_S, *,
                  compare_elsewhere: MathComparer | None = None) -> bool:
    """True when ``predicted`` is mathematically equivalent to ``gold``.

    Raises :class:`ComparisonTimeout` when parsing or comparing takes longer than
    ``timeout_s`` seconds. On the main thread math-verify's own SIGALRM guard applies;
    elsewhere the comparison goes to ``compare_elsewhere``, which the caller supplies
    (a thread has no SIGALRM, and core starts no processes).
    """
    if threading.current_thread() is threading.main_thread():
        from math_verify.errors import TimeoutException

        try:
            return compare(gold, predicted, timeout_s)
        except TimeoutException:
            raise ComparisonTimeout(f"math comparison took over {timeout_s} s") from None
    if compare_elsewhere is None:
        raise ValueError("comparing math answers off the main thread needs compare_elsewhere "
                         "(e.g. dasd_cli.pipeline.verification.compare_in_helper)")
    return compare_elsewhere(gold, predicted, timeout_s)
