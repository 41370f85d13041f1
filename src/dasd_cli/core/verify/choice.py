"""Multiple choice: the letter a response finally chose, e.g. ``{"choice": "B"}``.

Looks at the final answer part (after ``</think>``) and takes the LAST explicit choice:
``\\boxed{B}``, "the answer is (B)", "Answer: B", "correct option is B", "**B**"; failing
those, a final line that is only a letter ("B", "(B)", "B."), or an answer that opens with
the chosen option ("D. The circulatory system"). Letters A-J (MMLU-Pro has ten).
"""

from __future__ import annotations

import re

from dasd_cli.core.verify.answers import final_answer_part, last_boxed

LETTERS = "ABCDEFGHIJ"
_LETTER = r"\(?\[?\**([A-J])\**\]?\)?(?![A-Za-z0-9])"  # B, (B), [B], **B**, not "Because"
_EXPLICIT = re.compile(
    r"(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*(?:is|:)?[\s:*]*"
    + r"(?:option\s+|choice\s+)?" + _LETTER, re.IGNORECASE)
_BOXED_LETTER = re.compile(r"^(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?(?:[.:)].*)?$", re.DOTALL)
_LEADING = re.compile(r"^[\s*#>]*\(?([A-J])[.)]\s")
_LONE_LINE = re.compile(r"^[\s*#>]*(?:\(([A-J])\)|\[([A-J])\]|([A-J]))[.)]?[\s*]*$")


def extract_choice(response: str) -> str | None:
    """The chosen letter (upper case), or None when the response commits to none."""
    text = final_answer_part(response)
    boxed = last_boxed(text)
    best: tuple[int, str] | None = None
    if boxed is not None:
        match = _BOXED_LETTER.match(boxed.strip())
        if match:
            best = (text.rfind(boxed), match.group(1).upper())
    for match in _EXPLICIT.finditer(text):
        letter = match.group(1)
        # "answer: a" is a choice; "answer is a number" is prose: lower case only alone.
        if letter.islower() and not _ends_sentence(text, match.end()):
            continue
        if best is None or match.start() > best[0]:
            best = (match.start(), letter.upper())
    if best is not None:
        return best[1]
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            lone = _LONE_LINE.match(line)
            if lone:
                return next(g for g in lone.groups() if g)
            break
    leading = _LEADING.match(text)
    return leading.group(1) if leading else None


def _ends_sentence(text: str, end: int) -> bool:
    rest = text[end:end + 2]
    return rest == "" or rest[0] in ".\n)" or rest.startswith(" \n")


def normalize_choice(choice: str) -> str:
    """A reference letter as an upper-case letter: ``"(b)"`` -> ``"B"``."""
    return choice.strip().strip("().[]").strip().upper()
