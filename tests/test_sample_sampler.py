"""The hf backend's SeededSampler on hand-made logits: no model needed."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from dasd_cli.backends.hf import SeededSampler  # noqa: E402

PROBS = [0.5, 0.3, 0.2, 0.0]


def draw(temperature: float, top_p: float, seed: int, n: int) -> list[int]:
    sampler = SeededSampler([temperature], [top_p], [seed], [10**9], stop_id=3)
    logits = torch.log(torch.tensor([PROBS]) + 1e-30)
    return [int(sampler(None, logits).argmax()) for _ in range(n)]


def frequencies(picks: list[int]) -> list[float]:
    return [picks.count(i) / len(picks) for i in range(len(PROBS))]


def test_draws_follow_temperature_and_top_p() -> None:
    assert frequencies(draw(1.0, 1.0, 1, 20000)) == pytest.approx(PROBS, abs=0.015)
    scaled = [p ** (1 / 0.5) for p in PROBS]
    assert frequencies(draw(0.5, 1.0, 2, 20000)) == pytest.approx([p / sum(scaled) for p in scaled], abs=0.015)
    assert frequencies(draw(1.0, 0.7, 3, 20000)) == pytest.approx([0.625, 0.375, 0, 0], abs=0.015)
    assert set(draw(0.0, 1.0, 4, 50)) == {0}  # greedy


def test_raw_logprobs_caps_and_seeds() -> None:
    logits = torch.log(torch.tensor([PROBS, PROBS]) + 1e-30)
    sampler = SeededSampler([0.3, 2.0], [1.0, 1.0], [5, 6], [2, 3], stop_id=3)
    picks = [sampler(None, logits).argmax(dim=-1).tolist() for _ in range(4)]
    # raw: log p under the unscaled distribution, whatever the temperature
    for step, row_picks in enumerate(picks):
        for row, token in enumerate(row_picks):
            assert float(sampler.logprobs[step][row]) == pytest.approx(math.log(PROBS[token] + 1e-30), abs=1e-5)
    assert picks[2][0] == 3 and picks[3] == [3, 3] and sampler.capped == [True, True]
    assert draw(1.0, 1.0, 9, 30) == draw(1.0, 1.0, 9, 30) != draw(1.0, 1.0, 10, 30)
