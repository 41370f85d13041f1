"""Where to cut a student's response for mixed-policy continuation (METHOD.md section 3).

The teacher continues the student's own answer from a prefix: the cut falls at a random
position beyond ``cut_min`` of the response's length, snapped back to a sentence or line
boundary so the teacher starts at a natural place. The prefix is kept byte-exact.

Boundaries, as character indices into the response (the prefix is ``text[:cut]``):
- a line boundary: just after a run of newlines (the teacher starts a fresh line);
- a sentence boundary: just after ``.``, ``!`` or ``?`` (optionally followed by a closing
  quote or bracket) when whitespace follows; the cut goes before that whitespace, because
  byte-level BPE tokenizers attach a space to the word after it (`` The``), so the teacher
  continues with its own natural first token.

Pure: no model, no I/O; randomness comes from a seeded :class:`random.Random`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

DEFAULT_CUT_MIN = 0.5  # fraction of the response (in characters) the prefix must exceed

# After sentence-ending punctuation (and closing quotes/brackets) when whitespace follows.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")
_NEWLINES = re.compile(r"\n+")


@dataclass(frozen=True)
class Cut:
    """A chosen cut: ``prefix == text[:position]``."""

    position: int  # characters of the response kept as the student's prefix
    drawn: int  # the uniformly drawn position before snapping (for diagnostics)
    snapped: str  # "sentence", "line", "forward" (no boundary before the draw) or "none"

    def prefix(self, text: str) -> str:
        """The kept prefix of ``text``."""
        return text[:self.position]


def boundaries(text: str) -> list[int]:
    """Every sentence or line boundary strictly inside ``text``, ascending."""
    found: set[int] = set()
    for match in _SENTENCE_END.finditer(text):
        found.add(match.end())
    for match in _NEWLINES.finditer(text):
        found.add(match.end())
    return sorted(p for p in found if 0 < p < len(text))


def minimum_cut(length: int, cut_min: float) -> int:
    """The smallest allowed cut position: beyond ``cut_min`` of ``length``, at least 1."""
    return max(1, math.floor(cut_min * length) + 1)


def choose_cut(text: str, rng: random.Random, cut_min: float = DEFAULT_CUT_MIN) -> Cut | None:
    """Pick where to cut ``text``; ``None`` if it is too short to cut (under 2 characters).

    A position is drawn uniformly from [minimum, len(text)) and snapped back to the last
    boundary at or before it that is still beyond the minimum; if there is none, forward
    to the first boundary after it; if the text has no boundary past the minimum at all,
    the drawn position itself is used.
    """
    if not 0.0 <= cut_min < 1.0:
        raise ValueError(f"cut_min must be in [0, 1), not {cut_min}")
    length = len(text)
    low = minimum_cut(length, cut_min)
    if low >= length:
        return None
    drawn = rng.randrange(low, length)
    candidates = [p for p in boundaries(text) if p >= low]
    before = [p for p in candidates if p <= drawn]
    if before:
        position = before[-1]
        kind = "line" if text[position - 1] == "\n" else "sentence"
        return Cut(position, drawn, kind)
    after = [p for p in candidates if p > drawn]
    if after:
        return Cut(after[0], drawn, "forward")
    return Cut(drawn, drawn, "none")


def cut_rng(seed: int, record_id: str) -> random.Random:
    """A generator that depends only on the run's seed and the record (order-independent)."""
    return random.Random(f"dasd-continue:{seed}:{record_id}")
