"""Per-token training objectives: supervised fine-tuning and on-policy reverse KL.

An objective turns the log-probability ``l_t = log pi_theta(y_t | y_<t)`` of each
target token into (a) its loss and (b) the derivative of that loss with respect to
``l_t``. The chunked losses (core/train/loss.py) need nothing else: for a target token
with logits ``z_t``, ``d loss / d z_t = d loss / d l_t * (onehot(y_t) - softmax(z_t))``.

- :data:`SFT`: loss ``-l_t``, derivative ``-1`` (cross-entropy).
- :class:`ReverseKL` (METHOD.md section 5, on-policy distillation): the tokens were
  sampled by the student itself (the *sampler*, whose log-probs ``s_t`` the samples
  carry) and scored by the teacher (``q_t = log pi_T(y_t | y_<t)``). The advantage
  ``A_t = q_t - s_t`` is a constant (no gradient flows into it). The loss is PPO's
  clipped surrogate on the importance ratio ``r_t = exp(l_t - s_t)``::

      loss_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t)

  At ``pi_theta = pi_sampler`` (r_t = 1) its gradient is ``-A_t grad l_t``, the gradient
  of ``-sum_t A_t log pi_theta(y_t)``: the per-token policy gradient of the reverse KL
  ``KL(pi_theta || pi_T)`` estimated on the student's own samples. Later optimizer
  steps on the same samples weight each token by ``r_t``; where the ratio has left
  ``[1 - clip_low, 1 + clip_high]`` in the direction the advantage pushes it, the
  clipped term is the minimum and the token gives no gradient.

Every function works on 1-D fp32/fp64 tensors of the target tokens only; torch is
imported inside (the package imports fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("sft", "reverse-kl")
DEFAULT_CLIP_LOW = 0.2  # the ratio's floor is 1 - clip_low (PPO's epsilon)
DEFAULT_CLIP_HIGH = 0.2  # the ratio's ceiling is 1 + clip_high
STATS = ("advantage_sum", "kl_sum", "clipped")  # sums over target tokens (see ReverseKL.terms)


@dataclass(frozen=True)
class TokenTerms:
    """What an objective says about a set of target tokens."""

    loss: Any  # per-token loss (fp32/fp64), no gradient
    dloss: Any  # d loss_t / d l_t per token, no gradient
    stats: dict[str, Any]  # sums over these tokens as 0-d tensors (reverse KL: STATS)


class SupervisedObjective:
    """Cross-entropy on the target tokens: ``loss_t = -l_t``."""

    name = "sft"
    streams = False  # needs no per-token log-probs beside the targets
    stat_names: tuple[str, ...] = ()

    def terms(self, logprobs: Any, sampler: Any = None, teacher: Any = None) -> TokenTerms:
        import torch

        logprobs = logprobs.detach()
        return TokenTerms(-logprobs, torch.full_like(logprobs, -1.0), {})


SFT = SupervisedObjective()


@dataclass(frozen=True)
class ReverseKL:
    """On-policy distillation: the clipped policy-gradient surrogate of the reverse KL.

    ``terms`` takes the current log-probs ``l``, the sampler's ``s`` and the teacher's
    ``q`` of the same tokens. Its stats are sums over the tokens: ``advantage_sum`` of
    ``A_t = q_t - s_t``; ``kl_sum`` of ``l_t - q_t`` (the current policy's per-token
    reverse KL to the teacher on these samples; at the first step on fresh samples it is
    ``-A_t`` up to the numeric difference between sampler and trainer); ``clipped``, the
    tokens whose clipped term was the minimum (no gradient).
    """

    clip_low: float = DEFAULT_CLIP_LOW
    clip_high: float = DEFAULT_CLIP_HIGH
    name: str = "reverse-kl"
    streams: bool = True  # needs the sampler's and the teacher's log-prob of every target
    stat_names: tuple[str, ...] = STATS

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1), not {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"clip_high must be >= 0, not {self.clip_high}")

    def terms(self, logprobs: Any, sampler: Any = None, teacher: Any = None) -> TokenTerms:
        import torch

        if sampler is None or teacher is None:
            raise ValueError("the reverse-KL objective needs the sampler's and the teacher's log-probs")
        logprobs = logprobs.detach()
        sampler = sampler.to(logprobs.dtype)
        teacher = teacher.to(logprobs.dtype)
        advantage = teacher - sampler
        ratio = torch.exp(logprobs - sampler)
        bounded = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        plain, clipped_term = ratio * advantage, bounded * advantage
        # the unclipped term is the minimum (ties included: inside the bounds both are equal)
        active = plain <= clipped_term
        loss = -torch.minimum(plain, clipped_term)
        dloss = torch.where(active, -advantage * ratio, torch.zeros_like(ratio))
        stats = {"advantage_sum": advantage.sum(), "kl_sum": (logprobs - teacher).sum(),
                 "clipped": (~active).sum()}
        return TokenTerms(loss, dloss, stats)


Objective = SupervisedObjective | ReverseKL


def make_objective(name: str, clip_low: float = DEFAULT_CLIP_LOW,
                   clip_high: float = DEFAULT_CLIP_HIGH) -> Objective:
    """The objective called ``name`` (one of :data:`OBJECTIVES`)."""
    if name == "sft":
        return SFT
    if name == "reverse-kl":
        return ReverseKL(clip_low, clip_high)
    raise ValueError(f"unknown objective {name!r} (one of {', '.join(OBJECTIVES)})")


def surrogate(logprobs: Any, terms: TokenTerms) -> Any:
    """A scalar whose value is ``sum(terms.loss)`` and whose gradient with respect to
    ``logprobs`` (which carries the graph) is ``terms.dloss``: the objective for autograd."""
    weighted = (terms.dloss * logprobs).sum()
    return weighted + (terms.loss.sum() - weighted.detach())


def add_stats(total: dict[str, Any], more: dict[str, Any], weight: float = 1.0) -> None:
    """Accumulate ``more`` (numbers or 0-d tensors) times ``weight`` into ``total`` as floats."""
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + float(value) * weight


def step_metrics(sums: dict[str, float], targets: int) -> dict[str, float]:
    """The reverse-KL metrics of one optimizer step from its token sums (all ranks):
    ``advantage`` (mean A_t, minus the sampler's sampled reverse KL per token),
    ``reverse_kl`` (mean log pi_theta - log pi_T with the step's weights before the
    update) and ``clip_fraction`` (share of target tokens whose ratio was clipped)."""
    n = max(targets, 1)
    return {"advantage": sums["advantage_sum"] / n, "reverse_kl": sums["kl_sum"] / n,
            "clip_fraction": sums["clipped"] / n}
