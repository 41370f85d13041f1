"""Evaluation metrics over sampled responses that were checked against a reference.

Pure numbers: no files, no processes. ``dasd eval`` verifies each response record and
feeds the verdict here; this module groups the samples of one prompt and turns them
into the usual accuracy metrics (METHOD.md, "Evaluation"):

- avg@n: mean accuracy over all n samples of a prompt, averaged over prompts (the
  paper's avg@64; lighteval's avg@n);
- pass@k: the unbiased estimator of Chen et al. 2021, ``1 - C(n-c, k) / C(n, k)`` per
  prompt (the chance that at least one of k samples drawn without replacement from the
  n is correct), averaged over prompts;
- maj@k: majority vote over the answers of the first k samples (in input order) of a
  prompt, as NeMo-Skills' majority@k: samples without an answer do not vote (none at
  all scores 0); tied answers score the mean correctness of the tied answers, i.e. the
  expected score of breaking the tie uniformly at random, which is deterministic;
- the standard error of avg@n across prompts: the sample standard deviation (ddof 1) of
  the per-prompt accuracies over sqrt(prompts). NeMo-Skills reports it across runs
  instead (the spread of the k run averages); across prompts is the usual error bar of a
  benchmark mean and the unit the paired bootstrap of :func:`paired_bootstrap` resamples;
- 95% intervals on avg@n and on the truncation rate (cap hits): percentile bootstrap over
  prompts (a prompt's samples stay together), seeded, as :func:`paired_bootstrap`;
- the minimum detectable difference of a paired comparison: the difference a two-sided
  test at level alpha finds with the given power, ``(z(1 - alpha/2) + z(power))`` times
  the paired bootstrap's standard error (:func:`minimum_detectable_difference`).

Memory per prompt is a few counters plus one small integer per sample (which answer it
gave, for maj@k) and one 8-byte digest per distinct answer; never a record body.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

OVERALL = "all"
NO_ANSWER = -1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with ``c`` correct of ``n`` samples (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as a product so large n stays exact enough:
    ``C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_at_k(votes: Sequence[int], correct: Sequence[int], k: int) -> float:
    """maj@k for one prompt: the vote of its first ``k`` samples.

    ``votes[i]`` identifies the answer of sample i (equal answers, equal ids) or is
    :data:`NO_ANSWER`; ``correct[i]`` is its verdict (True or 1: correct). Samples without an answer do not
    vote; if none has one the score is 0. An answer's correctness is the share of its
    samples judged correct (0 or 1 unless the verifier disagreed with itself); when
    several answers tie for the most votes the score is the mean of theirs.
    """
    if not 1 <= k <= len(votes):
        raise ValueError(f"maj@k needs 1 <= k <= samples ({len(votes)}), not {k}")
    counts: dict[int, int] = {}
    right: dict[int, int] = {}
    for vote, ok in zip(votes[:k], correct[:k]):
        if vote == NO_ANSWER:
            continue
        counts[vote] = counts.get(vote, 0) + 1
        right[vote] = right.get(vote, 0) + bool(ok)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [vote for vote, count in counts.items() if count == top]
    return sum(right[vote] / counts[vote] for vote in tied) / len(tied)


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the k of pass@k and maj@k for n samples."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def answer_key(answer: str) -> bytes:
    """What makes two extracted answers the same vote: equal text once whitespace is
    removed (``1/2`` and ``1 / 2``; not ``0.5``), as an 8-byte digest."""
    return hashlib.blake2b(re.sub(r"\s+", "", answer).encode(), digest_size=8).digest()


@dataclass
class PromptTally:
    """The samples of one prompt (in one group): counts, and each sample's vote."""

    samples: int = 0
    correct: int = 0
    truncated: int = 0
    tokens: int = 0
    with_tokens: int = 0
    votable: bool = True  # False once a sample has no votable answer kind (code)
    votes: array[int] = field(default_factory=lambda: array("i"))
    verdicts: bytearray = field(default_factory=bytearray)
    answers: dict[bytes, int] = field(default_factory=dict)

    def add(self, correct: bool, answer: str | None, *, votable: bool = True,
            truncated: bool = False, tokens: int | None = None) -> None:
        self.samples += 1
        self.correct += bool(correct)
        self.truncated += bool(truncated)
        if tokens is not None:
            self.tokens += tokens
            self.with_tokens += 1
        self.votable = self.votable and votable
        if answer is None:
            self.votes.append(NO_ANSWER)
        else:
            self.votes.append(self.answers.setdefault(answer_key(answer), len(self.answers)))
        self.verdicts.append(bool(correct))

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


class Evaluation:
    """Verdicts grouped by (group, prompt_id); one group per ``--by`` value (or domain)."""

    def __init__(self) -> None:
        self.by_group: dict[str, dict[str, PromptTally]] = {}

    def add(self, group: str, prompt_id: str, correct: bool, answer: str | None, *,
            votable: bool = True, truncated: bool = False, tokens: int | None = None) -> None:
        prompts = self.by_group.setdefault(group, {})
        unit = prompts.get(prompt_id)
        if unit is None:
            unit = prompts[prompt_id] = PromptTally()
        unit.add(correct, answer, votable=votable, truncated=truncated, tokens=tokens)

    def groups(self) -> list[str]:
        return sorted(self.by_group)

    def units(self, group: str | None = None) -> dict[tuple[str, str], PromptTally]:
        """{(group, prompt_id): tally} of one group, or of all with None."""
        names = self.groups() if group is None else [group]
        return {(name, pid): unit for name in names for pid, unit in self.by_group.get(name, {}).items()}

    def summaries(self, *, seed: int = 0, resamples: int = 10000) -> list[Summary]:
        """One summary per group (sorted by name), then the overall one (every prompt).
        Each row's intervals use their own generator seeded with ``seed``."""
        rows = [summarize(group, list(self.by_group[group].values()), seed=seed, resamples=resamples)
                for group in self.groups()]
        rows.append(summarize(OVERALL, list(self.units().values()), seed=seed, resamples=resamples))
        return rows


@dataclass
class Summary:
    """Every number of one table row (a group, or all of them)."""

    group: str
    prompts: int
    samples: int  # records verified
    min_samples: int  # samples per prompt: the smallest and largest count
    max_samples: int
    avg: float | None  # avg@n: mean over prompts of the per-prompt accuracy
    stderr: float | None  # of avg, across prompts (None with fewer than 2 prompts)
    pass_at: dict[int, float]  # k up to min_samples
    maj_at: dict[int, float] | None  # None when some prompt has no votable answers (code)
    truncation: float | None  # share of samples with finish_reason "length"
    mean_tokens: float | None  # mean len(sampler.logprobs) over samples that have them
    avg_ci95: tuple[float, float] | None = None  # bootstrap over prompts
    truncation_ci95: tuple[float, float] | None = None  # bootstrap over prompts

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "prompts": self.prompts, "samples": self.samples,
                "samples_per_prompt": {"min": self.min_samples, "max": self.max_samples},
                "avg": self.avg, "stderr": self.stderr,
                "avg_ci95": None if self.avg_ci95 is None else list(self.avg_ci95),
                "pass_at": {str(k): v for k, v in self.pass_at.items()},
                "maj_at": None if self.maj_at is None else {str(k): v for k, v in self.maj_at.items()},
                "truncation": self.truncation,
                "truncation_ci95": None if self.truncation_ci95 is None else list(self.truncation_ci95),
                "mean_tokens": self.mean_tokens}


def summarize(group: str, units: Sequence[PromptTally], *, seed: int = 0,
              resamples: int = 10000) -> Summary:
    """The metrics of one group of prompts (module docstring for the definitions).

    pass@k and maj@k are given for k in :func:`ks_up_to` of the smallest sample count
    of the group, so that every prompt counts in every k. The 95% intervals resample the
    group's prompts ``resamples`` times with a generator seeded with ``seed``.
    """
    if not units:
        return Summary(group, 0, 0, 0, 0, None, None, {}, None, None, None)
    accuracies = [u.accuracy for u in units]
    samples = sum(u.samples for u in units)
    least = min(u.samples for u in units)
    ks = ks_up_to(least)
    pass_at = {k: _mean(pass_at_k(u.samples, u.correct, k) for u in units) for k in ks}
    maj_at = None
    if all(u.votable for u in units):
        maj_at = {k: _mean(majority_at_k(u.votes, u.verdicts, k) for u in units) for k in ks}
    with_tokens = sum(u.with_tokens for u in units)
    _, avg_low, avg_high = paired_bootstrap(accuracies, seed=seed, resamples=resamples)
    truncation_low, truncation_high = ratio_bootstrap(
        [u.truncated for u in units], [u.samples for u in units], seed=seed, resamples=resamples)
    return Summary(
        group=group, prompts=len(units), samples=samples, min_samples=least,
        max_samples=max(u.samples for u in units), avg=_mean(accuracies),
        stderr=standard_error(accuracies), pass_at=pass_at, maj_at=maj_at,
        truncation=sum(u.truncated for u in units) / samples,
        mean_tokens=sum(u.tokens for u in units) / with_tokens if with_tokens else None,
        avg_ci95=(avg_low, avg_high), truncation_ci95=(truncation_low, truncation_high))


def standard_error(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1) over sqrt(len); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


# --------------------------------------------------------------------------- comparing two runs

@dataclass
class Comparison:
    """avg@n of this run minus the other's over the prompts both have, with a CI."""

    group: str
    prompts: int  # paired prompts
    only_here: int
    only_other: int
    avg: float | None  # this run's avg@n over the paired prompts
    other_avg: float | None
    difference: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "prompts": self.prompts, "only_here": self.only_here,
                "only_other": self.only_other, "avg": self.avg, "other_avg": self.other_avg,
                "difference": self.difference, "ci95": [self.low, self.high]}


def compare(here: Evaluation, other: Evaluation, *, seed: int, resamples: int = 10000,
            confidence: float = 0.95) -> list[Comparison]:
    """Per group and overall: the paired difference in avg@n with a bootstrap CI.

    Prompts pair by (group, prompt_id). Each group's resampling uses its own generator
    seeded with ``seed``, so a group's interval does not depend on the other groups.
    """
    rows = []
    groups = sorted(set(here.groups()) | set(other.groups()))
    for group in [*groups, None]:
        mine, theirs = here.units(group), other.units(group)
        paired = sorted(mine.keys() & theirs.keys())
        name = OVERALL if group is None else group
        if not paired:
            rows.append(Comparison(name, 0, len(mine), len(theirs), None, None, None, None, None))
            continue
        a = [mine[key].accuracy for key in paired]
        b = [theirs[key].accuracy for key in paired]
        diffs = [x - y for x, y in zip(a, b)]
        difference, low, high = paired_bootstrap(diffs, seed=seed, resamples=resamples,
                                                 confidence=confidence)
        rows.append(Comparison(name, len(paired), len(mine) - len(paired), len(theirs) - len(paired),
                               _mean(a), _mean(b), difference, low, high))
    return rows


def paired_bootstrap(differences: Sequence[float], *, seed: int, resamples: int = 10000,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-prompt differences and its percentile bootstrap
    interval. Each resample draws len(differences) prompts with replacement (numpy's
    default generator seeded with ``seed``); the bounds are numpy's linear-interpolated
    percentiles of the resampled means at (1 - confidence)/2 and (1 + confidence)/2.
    """
    import numpy as np

    if not differences:
        raise ValueError("paired_bootstrap needs at least one difference")
    means = _resampled_means(differences, None, seed=seed, resamples=resamples)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(np.mean(differences)), float(low), float(high)


def ratio_bootstrap(numerators: Sequence[float], denominators: Sequence[float], *, seed: int,
                    resamples: int = 10000, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high): the percentile bootstrap interval of sum(numerators) / sum(denominators)
    when whole prompts are resampled (a prompt's samples stay together), drawn as in
    :func:`paired_bootstrap`. With equal denominators it is paired_bootstrap's interval
    of the per-prompt shares."""
    import numpy as np

    if not numerators or len(numerators) != len(denominators):
        raise ValueError("ratio_bootstrap needs one denominator per numerator, at least one")
    ratios = _resampled_means(numerators, denominators, seed=seed, resamples=resamples)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_standard_error(differences: Sequence[float], *, seed: int, resamples: int = 10000) -> float:
    """The standard deviation (ddof 1) of the resampled means that :func:`paired_bootstrap`
    draws with the same seed: the paired bootstrap's standard error of the mean."""
    import numpy as np

    if len(differences) < 2:
        raise ValueError("a standard error needs at least two differences")
    return float(np.std(_resampled_means(differences, None, seed=seed, resamples=resamples), ddof=1))


def minimum_detectable_difference(differences: Sequence[float], *, seed: int, resamples: int = 10000,
                                  alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true paired difference that a two-sided test at level ``alpha`` detects
    with probability ``power``: (z(1 - alpha/2) + z(power)) times the paired bootstrap's
    standard error (2.80 standard errors at the usual 5% and 80%)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * bootstrap_standard_error(differences, seed=seed,
                                                                    resamples=resamples)


def _resampled_means(values: Sequence[float], weights: Sequence[float] | None, *, seed: int,
                     resamples: int) -> Any:
    """``resamples`` bootstrap means of ``values`` (a float64 array): each draws len(values)
    indices with replacement from numpy's default generator seeded with ``seed``. With
    ``weights``, each resample's sum(values) / sum(weights) instead (NaN where the weights
    drawn sum to 0)."""
    import numpy as np

    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    data = np.asarray(values, dtype=np.float64)
    denominators = None if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    per_chunk = max(1, 4_000_000 // len(data))  # bound memory: at most ~32 MB of indices
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        picks = rng.integers(0, len(data), size=(stop - start, len(data)))
        if denominators is None:
            means[start:stop] = data[picks].mean(axis=1)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                means[start:stop] = data[picks].sum(axis=1) / denominators[picks].sum(axis=1)
    return means
