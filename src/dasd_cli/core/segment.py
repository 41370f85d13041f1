"""Sentence segmentation of long chain-of-thought text.

A sentence ends at a line break or after sentence-ending punctuation (``.``, ``!``,
``?``, optionally followed by closing quotes, brackets or markdown emphasis) that is
followed by white space or the end of the text. Never inside:

- code: fenced blocks (three or more backticks or tildes) and inline ``code``;
- math: ``$$...$$``, ``\\[...\\]``, ``$...$`` and ``\\(...\\)`` (an unclosed opener is
  plain text, so one stray ``$`` cannot swallow the rest of a response);
- decimal numbers (``3.14``: no space after the dot), enumeration markers at the start
  of a line (``1.``, ``a.``, ``iv.``), and common abbreviations (``e.g.``, ``i.e.``,
  ``Fig.``, ``Eq.``, ``vs.``, ``Dr.``, ...);
- before a lowercase letter or an operator (``x! = 120``, ``approx. the``).

Spans partition the text: white space between two sentences opens the next one (so a
word-initial token like " The" belongs to the sentence it starts), leading white space
belongs to the first sentence and trailing white space to the last. Every span but the
first holds non-white-space text. The result is deterministic: a pure function of the text.
"""

from __future__ import annotations

import re

# Lower-cased abbreviations (without their final dot) after which a dot ends nothing.
ABBREVIATIONS = frozenset({
    # Words that also end sentences ("no.", "max.") are deliberately absent.
    "e.g", "i.e", "cf", "vs", "al", "fig", "figs", "eq", "eqs", "eqn", "vol", "pp",
    "approx", "resp", "ref", "refs", "sec", "ch", "thm", "lem", "prop", "cor", "dr", "mr",
    "mrs", "ms", "prof", "jr", "sr", "inc", "ltd", "corp", "dept", "avg", "viz", "a.k.a",
    "u.s", "ph.d",
})
_END_PUNCT = ".!?"
_CLOSERS = "\"')]}*_»”’"
# A sentence never starts with one of these: the punctuation before was part of a formula.
_OPERATORS = set("=+-*/<>^,;:)]}|%")
_ENUM_MARKER = re.compile(r"(?:\d{1,3}|[A-Za-z]|[ivxlcdmIVXLCDM]{1,6})")
_LINE_PREFIX = re.compile(r"[ \t]*(?:[#>*+\-]+[ \t]*)*")  # markdown before a list marker


def protected_regions(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) character ranges of code and math in ``text``."""
    regions: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        end = -1
        if c in "`~" and text.startswith(c * 3, i):
            run = i
            while run < n and text[run] == c:
                run += 1
            fence = text[i:run]
            close = text.find(fence, run)
            # An unclosed fence (a truncated response) is code to the end.
            end = n if close < 0 else close + len(fence)
        elif c == "`":
            close = text.find("`", i + 1)
            newline = text.find("\n", i + 1)
            if close > 0 and (newline < 0 or close < newline):
                end = close + 1
        elif c == "\\" and i + 1 < n and text[i + 1] in "[(":
            closer = "\\]" if text[i + 1] == "[" else "\\)"
            close = text.find(closer, i + 2)
            if close >= 0:
                end = close + 2
        elif c == "\\":
            i += 2  # an escaped character (e.g. \$) opens nothing
            continue
        elif c == "$" and text.startswith("$$", i):
            close = text.find("$$", i + 2)
            if close >= 0:
                end = close + 2
        elif c == "$":
            end = _inline_dollar_end(text, i)
        if end > i:
            regions.append((i, end))
            i = end
        else:
            i += 1
    return regions


def _inline_dollar_end(text: str, start: int) -> int:
    """End of ``$...$`` opened at ``start``, or -1. Inline math never crosses a blank line."""
    j, n = start + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "$":
            return j + 1 if j > start + 1 else -1
        if c == "\n" and text[j + 1:j + 2] == "\n":
            return -1
        j += 1
    return -1


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the sentences of ``text``; together they cover it exactly.

    An empty text has no sentences; a text of white space only is one span.
    """
    if not text:
        return []
    protected = [False] * len(text)
    for start, end in protected_regions(text):
        for k in range(start, end):
            protected[k] = True
    boundaries = [0]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if protected[i]:
            i += 1
            continue
        if c == "\n":
            _cut_before_content(text, i, boundaries)
            i += 1
            continue
        if c in _END_PUNCT:
            j = i
            while j < n and text[j] in _END_PUNCT and not protected[j]:
                j += 1
            while j < n and text[j] in _CLOSERS and not protected[j]:
                j += 1
            if (j == n or text[j].isspace()) and _ends_sentence(text, i, j):
                _cut_before_content(text, j, boundaries)
            i = j
            continue
        i += 1
    boundaries.append(n)
    return [(a, b) for a, b in zip(boundaries, boundaries[1:]) if b > a]


def _cut_before_content(text: str, at: int, boundaries: list[int]) -> None:
    """Start a new sentence at the white space from ``at``, if content follows it.

    The cut goes where the white space run begins, i.e. right after the last
    non-space character, so white space always opens the next sentence.
    """
    k = at
    while k > 0 and text[k - 1].isspace():
        k -= 1
    if k <= boundaries[-1]:
        return  # nothing but white space since the last cut
    m = at
    while m < len(text) and text[m].isspace():
        m += 1
    if m == len(text):
        return  # trailing white space stays with the last sentence
    boundaries.append(k)


def _ends_sentence(text: str, punct_at: int, after: int) -> bool:
    """Whether the punctuation run text[punct_at:after] really ends a sentence."""
    nxt = after
    while nxt < len(text) and text[nxt] in " \t":
        nxt += 1
    if nxt < len(text) and text[nxt] != "\n":
        following = text[nxt]
        if following in _OPERATORS:
            return False
        if text[punct_at] == "." and following.islower():
            return False
    if text[punct_at] != "." or text[punct_at:after].startswith(".."):
        return True
    word_start = punct_at
    while word_start > 0 and not text[word_start - 1].isspace() and text[word_start - 1] not in "([{\"'":
        word_start -= 1
    word = text[word_start:punct_at]
    if word.lower() in ABBREVIATIONS:
        return False
    if word[:1].isdigit() and punct_at + 1 < len(text) and text[punct_at + 1].isdigit():
        return False  # a decimal (covered by the space rule too; kept explicit)
    if _ENUM_MARKER.fullmatch(word):
        line_start = text.rfind("\n", 0, word_start) + 1
        if _LINE_PREFIX.fullmatch(text[line_start:word_start]):
            return False  # "1. First step" at the start of a line
    return True


def sentences(text: str) -> list[str]:
    """The sentence strings of ``text`` (``sentence_spans`` applied)."""
    return [text[a:b] for a, b in sentence_spans(text)]
