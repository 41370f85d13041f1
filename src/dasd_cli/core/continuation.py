"""Where to cut a student's response for mixed-policy continuation (METHOD.md section 3).

The teacher continues the student's own answer from a prefix: the cut falls at a random
position beyond ``cut_min`` of the response's length, snapped back to a sentence or line
boundary so the teacher starts at a natural place. The prefix is kept byte-exact.

Sentences are those of :mod:`dasd_cli.core.segment`, the segmenter DAS scores with: one
definition of a sentence end, so a cut never falls after "e.g.", inside a decimal number,
or inside code or math (a fenced block, inline code, ``$...$``). Where one sentence ends
and the next begins, the cut (a character index; the prefix is ``text[:cut]``) goes:
- after the last newline of the white space between them, when it holds one (a line
  boundary: the teacher starts a fresh line, its indentation included);
- otherwise right after the sentence's last character, before the white space (a sentence
  boundary), because byte-level BPE tokenizers attach a space to the word after it
  (`` The``), so the teacher continues with its own natural first token.

Pure: no model, no I/O; randomness comes from a seeded :class:`random.Random`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from dasd_cli.core.segment import sentence_spans

DEFAULT_CUT_MIN = 0.5  # fraction of the response (in characters) the prefix must exceed


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
    """Every sentence or line boundary strictly inside ``text``, ascending: one per start of
    a sentence of :func:`~dasd_cli.core.segment.sentence_spans` but the first."""
    found = []
    for start, _end in sentence_spans(text)[1:]:
        # A span opens with the white space that separates it from the sentence before.
        content = start
        while content < len(text) and text[content].isspace():
            content += 1
        newline = text.rfind("\n", start, content)
        found.append(newline + 1 if newline >= 0 else start)
    return [p for p in found if 0 < p < len(text)]


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
