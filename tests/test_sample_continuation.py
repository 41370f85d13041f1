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


# --------------------------------------------------------------------------- sentence ends are core/segment.py's

PROSE = ("We try a classic method, e.g. Newton's iteration, on the function. It converges fast, i.e. "
         "Quadratically so! The root is 1.41 and Fig. 2 shows it.\n"
         "1. First step\n"
         "2. Second step\n\n"
         "Done with that. Now the code:\n"
         "```python\n"
         "x = 1.  # a dot before spaces. Still code!\n"
         "y = x + 2\n"
         "print(y)\n"
         "```\n"
         "That is all. Thanks.")


def test_no_cut_after_abbreviations_decimals_enumerations_or_inside_code() -> None:
    found = boundaries(PROSE)
    for after in ("e.g.", "i.e.", "Fig.", "1.41", "\n1.", "\n2.", "x = 1."):
        end = PROSE.index(after) + len(after)
        assert end not in found, after
    assert PROSE.index("1.41") + 2 not in found
    fence_start = PROSE.index("```python")
    fence_end = PROSE.index("```\nThat") + 3
    assert not [p for p in found if fence_start < p < fence_end]
    # the real ends are still there: after a sentence, after a newline
    assert PROSE.index(" It converges") in found and PROSE.index(" Now the code") in found
    assert PROSE.index("2. Second") in found and PROSE.index("That is all") in found
    for seed in range(300):
        cut = choose_cut(PROSE, random.Random(seed), cut_min=0.3)
        assert cut is not None and not fence_start < cut.position < fence_end


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab .!?\n`$e.g1")), min_size=0, max_size=120))
def test_every_boundary_is_a_sentence_start_of_the_segmenter(text: str) -> None:
    """A cut falls only in the white space that opens a sentence of sentence_spans."""
    from dasd_cli.core.segment import sentence_spans

    starts = [start for start, _ in sentence_spans(text)[1:]]
    for position in boundaries(text):
        assert any(start <= position and not text[start:position].strip() for start in starts)
    assert len(boundaries(text)) == len(starts)
