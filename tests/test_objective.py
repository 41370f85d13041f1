"""The reverse-KL objective (core/train/objective.py) through both chunked losses."""

from __future__ import annotations

import math

import pytest
import torch

from dasd_cli.core.train import loss
from dasd_cli.core.train.objective import SFT, ReverseKL, make_objective

VOCAB, HIDDEN = 40, 12


def _case(seed: int = 0, rows: int = 2, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, length, HIDDEN, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, VOCAB, (rows, length), generator=gen)
    targets[0, :3] = -100
    return gen, hidden, weight, targets


def _logprobs(hidden, weight, targets):
    """log pi(target) of every position (0 where there is no target), no gradient."""
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.t(), dim=-1)
        return logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)


def _analytic(hidden, weight, targets, coef):
    """d(loss)/d(hidden), d(loss)/d(weight) for d loss_t / d z_t = coef_t (softmax - onehot):
    the closed form of the per-token policy gradient, written out without autograd."""
    with torch.no_grad():
        z = hidden @ weight.t()
        probs = torch.softmax(z, dim=-1)
        onehot = torch.nn.functional.one_hot(targets.clamp(min=0), VOCAB).to(probs.dtype)
        g = (probs - onehot) * (coef * (targets != -100))[..., None]
        return g @ weight, torch.einsum("blv,blh->vh", g, hidden)


def _run(impl, hidden, weight, targets, objective, sampler=None, teacher=None, chunk=4):
    hidden.grad = weight.grad = None
    if impl == "fused":
        got, count, stats = loss.fused_linear_loss(hidden, weight, targets, chunk_size=chunk,
                                                   objective=objective, sampler=sampler, teacher=teacher)
    else:
        got, count, stats = loss.checkpointed_loss(hidden, lambda h: h @ weight.t(), targets, chunk_size=chunk,
                                                   objective=objective, sampler=sampler, teacher=teacher)
    got.backward()
    return got.detach(), count, stats, hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("impl", ["fused", "checkpointed"])
def test_gradient_is_the_analytic_policy_gradient_at_ratio_one(impl):
    """theta = sampler: the gradient is sum_t A_t (softmax - onehot) chained into hidden and
    weight, that of -sum_t A_t log pi_theta(y_t)."""
    gen, hidden, weight, targets = _case()
    sampler = _logprobs(hidden, weight, targets)
    teacher = sampler + torch.randn(sampler.shape, generator=gen, dtype=torch.float64)
    advantage = teacher - sampler
    value, count, stats, g_hidden, g_weight = _run(impl, hidden, weight, targets, ReverseKL(), sampler, teacher)
    want_hidden, want_weight = _analytic(hidden, weight, targets, advantage)
    assert count == 15
    torch.testing.assert_close(g_hidden, want_hidden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_weight, want_weight, rtol=1e-10, atol=1e-12)
    mask = targets != -100
    assert float(value) == pytest.approx(-float(advantage[mask].sum()), rel=1e-10)  # r = 1: loss = -sum A
    assert stats["advantage_sum"] == pytest.approx(float(advantage[mask].sum()), rel=1e-10)
    assert stats["kl_sum"] == pytest.approx(-float(advantage[mask].sum()), rel=1e-10)  # l = s
    assert stats["clipped"] == 0


@pytest.mark.parametrize("impl", ["fused", "checkpointed"])
def test_off_policy_tokens_are_weighted_by_the_importance_ratio(impl):
    gen, hidden, weight, targets = _case(seed=1)
    current = _logprobs(hidden, weight, targets)
    ratio = torch.empty(current.shape, dtype=torch.float64).uniform_(0.85, 1.15, generator=gen)
    sampler = current - ratio.log()  # r = exp(l - s), inside the default bounds
    teacher = sampler + torch.randn(current.shape, generator=gen, dtype=torch.float64)
    _, _, stats, g_hidden, g_weight = _run(impl, hidden, weight, targets, ReverseKL(), sampler, teacher)
    want_hidden, want_weight = _analytic(hidden, weight, targets, (teacher - sampler) * ratio)
    torch.testing.assert_close(g_hidden, want_hidden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_weight, want_weight, rtol=1e-10, atol=1e-12)
    assert stats["clipped"] == 0


@pytest.mark.parametrize("impl", ["fused", "checkpointed"])
def test_the_ratio_is_clipped_at_the_configured_bounds(impl):
    """Asymmetric bounds [0.9, 1.3]: a token whose ratio is past the bound its advantage
    pushes toward gives no gradient and the bound's value; the other side keeps both."""
    objective = ReverseKL(clip_low=0.1, clip_high=0.3)
    _, hidden, weight, targets = _case(seed=2, rows=1, length=9)
    targets[0, :] = torch.arange(9) + 3
    current = _logprobs(hidden, weight, targets)[0]
    #              A > 0 past top, A > 0 under top, A < 0 under floor, A < 0 over floor, A > 0 under floor,
    ratios = [1.35, 1.29, 0.85, 0.91, 0.5, 1.31, 2.0, 1.0, 0.89]
    advantages = [0.7, 0.7, -0.4, -0.4, 0.3, -0.2, 1.5, 0.0, -1.0]
    ratio = torch.tensor(ratios, dtype=torch.float64)
    advantage = torch.tensor(advantages, dtype=torch.float64)
    sampler = (current - ratio.log())[None]
    teacher = sampler + advantage[None]
    value, count, stats, g_hidden, g_weight = _run(impl, hidden, weight, targets, objective, sampler, teacher)
    # clipped: (A > 0 and r > 1.3) or (A < 0 and r < 0.9)
    clipped = torch.tensor([a > 0 and r > 1.3 or a < 0 and r < 0.9 for r, a in zip(ratios, advantages)])
    assert clipped.tolist() == [True, False, True, False, False, False, True, False, True]
    assert stats["clipped"] == 4
    coef = torch.where(clipped, torch.zeros_like(ratio), advantage * ratio)
    want_hidden, want_weight = _analytic(hidden, weight, targets, coef[None])
    torch.testing.assert_close(g_hidden, want_hidden, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_weight, want_weight, rtol=1e-9, atol=1e-12)
    bounded = ratio.clamp(0.9, 1.3)
    want_value = -torch.minimum(ratio * advantage, bounded * advantage).sum()
    assert float(value) == pytest.approx(float(want_value), rel=1e-10)
    # the bound's value where clipped: 1.3 * 0.7 for the first token, 0.9 * -0.4 for the third
    assert float(-torch.minimum(ratio * advantage, bounded * advantage)[0]) == pytest.approx(-1.3 * 0.7)
    assert float(-torch.minimum(ratio * advantage, bounded * advantage)[2]) == pytest.approx(0.9 * 0.4)


@pytest.mark.parametrize("impl", ["fused", "checkpointed"])
def test_zero_advantages_give_zero_gradient(impl):
    _, hidden, weight, targets = _case(seed=3)
    sampler = _logprobs(hidden, weight, targets) - 0.05
    _, _, stats, g_hidden, g_weight = _run(impl, hidden, weight, targets, ReverseKL(), sampler, sampler.clone())
    assert torch.count_nonzero(g_hidden) == 0 and torch.count_nonzero(g_weight) == 0
    assert stats["advantage_sum"] == 0


@pytest.mark.parametrize("impl", ["fused", "checkpointed"])
def test_sft_objective_is_unchanged_cross_entropy(impl):
    _, hidden, weight, targets = _case(seed=4)
    value, count, stats, g_hidden, g_weight = _run(impl, hidden, weight, targets, SFT)
    want_hidden, want_weight = _analytic(hidden, weight, targets, torch.ones(targets.shape, dtype=torch.float64))
    ce = torch.nn.functional.cross_entropy((hidden @ weight.t()).reshape(-1, VOCAB), targets.reshape(-1),
                                           reduction="sum", ignore_index=-100)
    assert float(value) == pytest.approx(float(ce.detach()), rel=1e-10) and stats == {}
    torch.testing.assert_close(g_hidden, want_hidden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_weight, want_weight, rtol=1e-10, atol=1e-12)


def test_bad_bounds_and_names_are_refused():
    with pytest.raises(ValueError, match="clip_low must be in"):
        ReverseKL(clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high must be >= 0"):
        ReverseKL(clip_high=-0.1)
    with pytest.raises(ValueError, match="unknown objective 'forward-kl'"):
        make_objective("forward-kl")
    assert make_objective("reverse-kl", 0.1, 0.28) == ReverseKL(0.1, 0.28)
    assert math.isclose(make_objective("reverse-kl").clip_high, 0.2)
