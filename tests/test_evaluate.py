"""Evaluation metrics (core/evaluate.py): pass@k, maj@k, standard error, paired bootstrap."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from dasd_cli.core.evaluate import (NO_ANSWER, Evaluation, PromptTally, bootstrap_standard_error,
                                    compare, ks_up_to, majority_at_k, minimum_detectable_difference,
                                    paired_bootstrap, pass_at_k, ratio_bootstrap, standard_error)


# --------------------------------------------------------------------------- pass@k

def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (c correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_the_count_over_all_k_subsets(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_closed_form_and_edges() -> None:
    assert pass_at_k(64, 3, 1) == pytest.approx(3 / 64)
    assert pass_at_k(64, 3, 8) == pytest.approx(1 - math.comb(61, 8) / math.comb(64, 8))
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples: every subset has a right one
    for bad in ((4, 5, 1), (4, 2, 0), (4, 2, 5)):
        with pytest.raises(ValueError, match=r"pass@k needs 0 <= c <= n and 1 <= k <= n"):
            pass_at_k(*bad)


def test_ks_are_powers_of_two_and_n() -> None:
    assert ks_up_to(1) == [1]
    assert ks_up_to(4) == [1, 2, 4]
    assert ks_up_to(6) == [1, 2, 4, 6]
    assert ks_up_to(64) == [1, 2, 4, 8, 16, 32, 64]


# --------------------------------------------------------------------------- maj@k

A, B, C, X = 0, 1, 2, NO_ANSWER


@pytest.mark.parametrize("votes, correct, k, expected", [
    ([A, A, B], [1, 1, 0], 3, 1.0),          # clear majority, right
    ([A, B, B], [1, 0, 0], 3, 0.0),          # clear majority, wrong
    ([A, B, B], [1, 0, 0], 1, 1.0),          # only the first sample votes
    ([A, B], [1, 0], 2, 0.5),                # a two-way tie: mean of the tied answers
    ([A, B, C, C, A, B], [0, 1, 0, 0, 0, 1], 6, 1 / 3),  # three-way tie, one right
    ([X, X, B], [0, 0, 1], 3, 1.0),          # no-answer samples do not vote...
    ([X, X, B], [0, 0, 1], 2, 0.0),          # ...and none at all scores 0
    ([X, X, A, B, B], [0, 0, 1, 0, 0], 5, 0.0),  # X twice does not beat B twice
])
def test_majority_at_k_hand_cases(votes, correct, k, expected) -> None:
    assert majority_at_k(votes, [bool(c) for c in correct], k) == pytest.approx(expected)


def test_majority_groups_answers_written_alike() -> None:
    unit = PromptTally()
    for answer, ok in (("1/2", True), ("1 / 2", True), ("3", False), ("\\frac{1}{2}", True), ("3", False)):
        unit.add(ok, answer)
    # "1/2" and "1 / 2" are one vote (2), "3" has 2, "\frac{1}{2}" 1: a tie of 1/2 and 3
    assert list(unit.votes) == [0, 0, 1, 2, 1]
    assert majority_at_k(unit.votes, unit.verdicts, 5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"maj@k needs 1 <= k <= samples \(5\), not 6"):
        majority_at_k(unit.votes, unit.verdicts, 6)


# --------------------------------------------------------------------------- groups

def test_summary_numbers_by_hand() -> None:
    ev = Evaluation()
    # p1: 3 of 4 right; p2: 1 of 4 right (math); p3: 0 of 2 (code, no votable answers)
    for ok, answer in ((1, "2"), (1, "2"), (0, "5"), (1, "2")):
        ev.add("math", "p1", bool(ok), answer, tokens=10)
    for (ok, answer), truncated in zip(((0, "7"), (0, None), (1, "4"), (0, "7")), (False, True, False, False)):
        ev.add("math", "p2", bool(ok), answer, truncated=truncated)
    for ok in (0, 0):
        ev.add("code", "p3", bool(ok), None, votable=False, tokens=30)
    rows = {row.group: row for row in ev.summaries()}
    math_row = rows["math"]
    assert (math_row.prompts, math_row.samples, math_row.min_samples, math_row.max_samples) == (2, 8, 4, 4)
    assert math_row.avg == pytest.approx(0.5)
    assert math_row.stderr == pytest.approx(statistics.stdev([0.75, 0.25]) / math.sqrt(2))
    assert math_row.pass_at == pytest.approx({1: 0.5, 2: (1.0 + 0.5) / 2, 4: 1.0})
    # maj@1: p1 right, p2 wrong; maj@2: p1 "2"x2 right, p2 "7" alone (None does not vote) wrong;
    # maj@4: p1 right, p2 "7"x2 beats "4" -> wrong
    assert math_row.maj_at == pytest.approx({1: 0.5, 2: 0.5, 4: 0.5})
    assert math_row.truncation == pytest.approx(1 / 8)
    assert math_row.mean_tokens == pytest.approx(10)
    code_row = rows["code"]
    assert code_row.maj_at is None and code_row.stderr is None and code_row.pass_at == {1: 0.0, 2: 0.0}
    overall = rows["all"]
    assert overall.prompts == 3 and overall.min_samples == 2 and overall.max_samples == 4
    assert overall.avg == pytest.approx((0.75 + 0.25 + 0) / 3)
    assert list(overall.pass_at) == [1, 2] and overall.maj_at is None
    assert overall.mean_tokens == pytest.approx((40 + 60) / 6)


def test_standard_error_across_prompts() -> None:
    assert standard_error([1.0]) is None
    assert standard_error([0.0, 1.0, 1.0, 0.0]) == pytest.approx(statistics.stdev([0, 1, 1, 0]) / 2)


# --------------------------------------------------------------------------- bootstrap

def test_identical_runs_give_a_zero_interval() -> None:
    assert paired_bootstrap([0.0] * 30, seed=1) == (0.0, 0.0, 0.0)


def test_a_constant_shift_gives_an_interval_at_the_shift() -> None:
    mean, low, high = paired_bootstrap([0.25] * 17, seed=3)
    assert mean == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_two_values_have_known_percentiles() -> None:
    # Means of 2 draws from {0, 1}: 0 (1/4), 0.5 (1/2), 1 (1/4): the 2.5% and 97.5%
    # percentiles of many resamples are 0 and 1.
    mean, low, high = paired_bootstrap([0.0, 1.0], seed=7, resamples=4000)
    assert (mean, low, high) == (0.5, 0.0, 1.0)


def test_seeded_interval_is_reproducible_and_near_the_normal_one() -> None:
    diffs = [((i * 37) % 11 - 5) / 10 for i in range(400)]
    first = paired_bootstrap(diffs, seed=42, resamples=5000)
    assert paired_bootstrap(diffs, seed=42, resamples=5000) == first
    assert paired_bootstrap(diffs, seed=43, resamples=5000) != first
    mean, low, high = first
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert low == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.25 * se)


def test_ratio_interval_resamples_whole_prompts() -> None:
    # Equal sample counts: the ratio's interval is paired_bootstrap's over per-prompt shares.
    truncated, samples = [0, 1, 4, 2, 0, 3, 0, 0, 1, 4] * 8, [4] * 80
    _mean, low, high = paired_bootstrap([t / 4 for t in truncated], seed=5, resamples=3000)
    assert ratio_bootstrap(truncated, samples, seed=5, resamples=3000) == pytest.approx((low, high))
    # Unequal counts weight prompts by their samples: one prompt of 96 samples, all
    # truncated, beside 4 of 1 sample, none truncated: the ratio is 96/100, not 1/5.
    low, high = ratio_bootstrap([96, 0, 0, 0, 0], [96, 1, 1, 1, 1], seed=1, resamples=2000)
    assert 0.9 < high <= 1.0 and low < 0.96
    with pytest.raises(ValueError, match="ratio_bootstrap needs one denominator per numerator"):
        ratio_bootstrap([1, 2], [3], seed=0)


def test_summary_intervals_bracket_the_estimates_and_follow_the_seed() -> None:
    ev = Evaluation()
    for p in range(40):
        for i in range(4):
            ev.add("math", f"p{p}", (p + i) % 3 == 0, str(i), truncated=(p * i) % 5 == 1)
    row = ev.summaries(seed=3, resamples=2000)[-1]
    assert row.avg_ci95[0] < row.avg < row.avg_ci95[1]
    assert row.truncation_ci95[0] < row.truncation < row.truncation_ci95[1]
    assert row.avg_ci95 == pytest.approx(paired_bootstrap(
        [u.accuracy for u in ev.units().values()], seed=3, resamples=2000)[1:])
    assert ev.summaries(seed=3, resamples=2000)[-1].as_dict() == row.as_dict()
    other = ev.summaries(seed=4, resamples=2000)[-1]
    assert (other.avg_ci95, other.truncation_ci95) != (row.avg_ci95, row.truncation_ci95)
    assert row.as_dict()["truncation_ci95"] == list(row.truncation_ci95)


def test_minimum_detectable_difference_is_2_8_bootstrap_standard_errors() -> None:
    diffs = [((i * 37) % 11 - 5) / 10 for i in range(400)]
    se = bootstrap_standard_error(diffs, seed=42, resamples=5000)
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(len(diffs)), rel=0.05)
    mdd = minimum_detectable_difference(diffs, seed=42, resamples=5000)
    assert mdd == pytest.approx((1.959964 + 0.841621) * se, rel=1e-6)
    # A quarter of the prompts at the same spread: twice the detectable difference.
    assert minimum_detectable_difference(diffs[:100], seed=42, resamples=5000) == pytest.approx(2 * mdd, rel=0.15)
    assert minimum_detectable_difference(diffs, seed=42, resamples=5000, power=0.5) == pytest.approx(1.959964 * se)
    with pytest.raises(ValueError, match="a standard error needs at least two differences"):
        bootstrap_standard_error([0.5], seed=0)


def test_compare_pairs_prompts_per_group() -> None:
    here, other = Evaluation(), Evaluation()
    for p in range(4):
        for s in range(2):
            here.add("math", f"p{p}", s == 0 or p < 2, "x")
            other.add("math", f"p{p}", s == 0, "x")
    here.add("math", "only-here", True, "x")
    other.add("science", "q", True, "B")
    rows = {row.group: row for row in compare(here, other, seed=0, resamples=200)}
    m = rows["math"]
    assert (m.prompts, m.only_here, m.only_other) == (4, 1, 0)
    assert m.avg == pytest.approx(0.75) and m.other_avg == pytest.approx(0.5)
    assert m.difference == pytest.approx(0.25)
    assert 0.0 <= m.low <= 0.25 <= m.high <= 0.5
    assert rows["science"].prompts == 0 and rows["science"].difference is None
    assert rows["all"].prompts == 4 and rows["all"].only_other == 1
