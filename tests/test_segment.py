"""Sentence segmentation: exact partition of any text, and no cut inside math, code,
decimals, enumerations or abbreviations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd_cli.core.segment import protected_regions, sentence_spans, sentences

ALPHABET = st.sampled_from(list("ab Z.!?$`\\[]()\n\t 1e.g,") + ["$$", "```", "\\(", "\\)", "\\[", "\\]",
                                                                  "e.g. ", "3.14", "\n\n", "1. "])


def _check_partition(text: str) -> None:
    spans = sentence_spans(text)
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, b), (c, _) in zip(spans, spans[1:]):
        assert b == c  # contiguous: nothing lost, nothing counted twice
    assert all(b > a for a, b in spans)
    assert "".join(text[a:b] for a, b in spans) == text
    for a, b in spans[1:]:
        assert text[a:b].strip()  # every sentence after the first holds content


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_spans_partition_any_unicode_text(text):
    _check_partition(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=60).map("".join))
def test_spans_partition_markup_heavy_text(text):
    _check_partition(text)
    assert sentence_spans(text) == sentence_spans(text)  # deterministic


@settings(max_examples=200, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join), st.lists(ALPHABET, max_size=40).map("".join))
def test_no_cut_inside_protected_regions(before, after):
    text = before + " $x = 1. Y? z! \n w$ " + after
    _check_partition(text)
    for a, b in protected_regions(text):
        for start, _ in sentence_spans(text)[1:]:
            assert not a < start < b


def test_basic_sentences_and_whitespace_opens_next():
    assert sentences("Hi there. Bye now!  Why?\nOk") == ["Hi there.", " Bye now!", "  Why?", "\nOk"]
    assert sentences("  lead. trail  ") == ["  lead. trail  "]  # lowercase after '.': no cut
    assert sentences("One.\n\n\nTwo.\n") == ["One.", "\n\n\nTwo.\n"]
    assert sentences(" \n ") == [" \n "]
    assert sentences("") == []


@pytest.mark.parametrize("text", [
    "The value $x = 3. Then y$ holds here.",
    "Display $$a. B\n\nC. D$$ stays whole.",
    "Paren \\(a. B\\) and bracket \\[c. D\n E. F\\] stay whole.",
    "Inline `x = 1. Y` code stays whole.",
    "Pi is 3.14159 and e is 2.718 roughly.",
    "See e.g. the proof, i.e. this one, and Fig. 3 and Eq. 2 vs. Dr. Who.",
    "Compute 5! = 120 here.",
])
def test_no_cut_in_crafted_cases(text):
    assert sentences(text) == [text]


def test_code_fence_is_one_sentence_even_over_lines():
    text = "Code:\n```python\nx = 1. Y\nprint(x)! Z\n```\nDone."
    assert sentences(text) == ["Code:", "\n```python\nx = 1. Y\nprint(x)! Z\n```", "\nDone."]


def test_unclosed_fence_runs_to_end_but_stray_dollar_does_not():
    assert sentences("A.\n```\nB. C") == ["A.", "\n```\nB. C"]
    assert sentences("It costs $5. Then more.") == ["It costs $5.", " Then more."]


def test_enumerations_at_line_start_do_not_cut():
    text = "Steps:\n1. Add one. Then\n2. Double.\n  iv. Roman.\n- a. Bullet."
    assert sentences(text) == ["Steps:", "\n1. Add one.", " Then", "\n2. Double.",
                               "\n  iv. Roman.", "\n- a. Bullet."]


def test_line_breaks_cut_but_not_inside_display_math():
    text = "We get\n$$\nx = 1.\n\ny = 2.\n$$\nso done"
    assert sentences(text) == ["We get", "\n$$\nx = 1.\n\ny = 2.\n$$", "\nso done"]


def test_escaped_dollar_is_not_math():
    assert sentences("Costs \\$5. Then \\$6.") == ["Costs \\$5.", " Then \\$6."]


def test_think_block_shape():
    text = "<think>\nFirst. Second?\n</think>\n\nAnswer: $\\boxed{4}$."
    assert sentences(text) == ["<think>", "\nFirst.", " Second?", "\n</think>", "\n\nAnswer: $\\boxed{4}$."]
