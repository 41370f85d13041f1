"""Cut points for mixed-policy --continue (core/continuation.py): pure, no model."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dasd_cli.core.continuation import Cut, boundaries, choose_cut, cut_rng, minimum_cut

TEXT = ("First we add the numbers. Then we check the result!\n"
        "Line two has no period\n\nAfter a blank line, 3.5 is a decimal. Is it done? Yes.")


def test_boundaries_are_after_sentence_punctuation_and_newline_runs() -> None:
    found = boundaries(TEXT)
    assert TEXT[:found[0]].endswith("numbers.")
    assert all(TEXT[p - 1] in ".!?\n" for p in found)
    # a run of newlines is one boundary, after the run; a decimal point is none
    assert TEXT.index("After") in found and TEXT.index("After") - 1 not in found
    assert TEXT.index("3.5") + 2 not in found


def test_cut_is_beyond_minimum_and_snapped_back() -> None:
    for seed in range(200):
        cut = choose_cut(TEXT, random.Random(seed), cut_min=0.5)
        assert cut is not None
        assert cut.position >= minimum_cut(len(TEXT), 0.5) > len(TEXT) / 2
        assert cut.position < len(TEXT)
        assert cut.position in boundaries(TEXT)
        if cut.snapped in ("sentence", "line"):
            assert cut.position <= cut.drawn
            # snapped to the LAST boundary before the draw
            assert not [p for p in boundaries(TEXT) if cut.position < p <= cut.drawn]


def test_forward_snap_and_no_boundary() -> None:
    text = "a" * 60 + ". " + "b" * 5  # the only boundary is at 61, before the minimum of 64
    cut = choose_cut(text, random.Random(1), cut_min=0.95)
    assert cut is not None and cut.snapped == "none" and cut.position == cut.drawn
    text = "x" * 10 + "\n" + "y" * 89  # one boundary at 11; minimum 6; draws after it snap back
    cuts = {choose_cut(text, random.Random(s), cut_min=0.05).snapped for s in range(50)}
    assert cuts <= {"line", "forward"} and "line" in cuts


def test_too_short_to_cut() -> None:
    assert choose_cut("", random.Random(0)) is None
    assert choose_cut("a", random.Random(0)) is None
    assert choose_cut("ab", random.Random(0)) is None  # beyond half of 2 characters is all of it
    assert choose_cut("abc", random.Random(0)) == Cut(2, 2, "none")


def test_rng_depends_on_seed_and_record_only() -> None:
    a = choose_cut(TEXT, cut_rng(7, "r1"))
    assert a == choose_cut(TEXT, cut_rng(7, "r1"))
    others = {choose_cut(TEXT, cut_rng(s, "r1")).position for s in range(30)}  # type: ignore[union-attr]
    assert len(others) > 1


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab .!?\n\u00e9\u4e2d")), min_size=2, max_size=200),
       cut_min=st.floats(min_value=0.0, max_value=0.95), seed=st.integers(0, 10**6))
def test_prefix_is_exact_and_beyond_minimum(text: str, cut_min: float, seed: int) -> None:
    cut = choose_cut(text, random.Random(seed), cut_min)
    if cut is None:
        assert minimum_cut(len(text), cut_min) >= len(text)
        return
    assert cut.position > cut_min * len(text)
    assert 0 < cut.position < len(text)
    assert cut.prefix(text) + text[cut.position:] == text
