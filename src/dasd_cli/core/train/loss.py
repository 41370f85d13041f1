"""Token-weighted training losses computed in chunks, so ``[tokens x vocab]`` logits
never exist all at once.

The model body gives hidden states ``[N, H]``; the output projection (``lm_head``) is
applied ``chunk_size`` rows at a time. Only rows that have a target (not -100) are
projected at all: prompt tokens cost nothing here. Every function returns the SUM of
per-token losses (nats) and the number of target tokens; the caller divides by the
target-token count of the whole global batch, so packed and unpacked training on the
same samples give the same loss and gradients.

What a token's loss is comes from an objective (core/train/objective.py): cross-entropy
(SFT, the default) or on-policy reverse KL, which also reads the sampler's and the
teacher's log-prob of every target (``sampler``, ``teacher``: tensors shaped like the
targets, already shifted). The ``*_loss`` functions return a third value, the
objective's per-token sums for the metrics.

Two implementations:
- :func:`fused_linear_loss` computes the gradient chunk by chunk during the forward
  pass (a custom autograd function): one projection per chunk, no recompute. It needs
  the projection weight as a tensor.
- :func:`checkpointed_loss` calls a projection callable (the ``lm_head`` module) per
  chunk under activation checkpointing, recomputing the chunk's logits in backward.
  Slower, but module hooks fire on every call, which DeepSpeed ZeRO-3 needs to gather a
  partitioned weight.
:func:`fused_linear_cross_entropy` and :func:`checkpointed_cross_entropy` are the two
with the SFT objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on use: core loads without it
    import torch
    from torch import Tensor

from dasd_cli.core.chat import IGNORE_INDEX
from dasd_cli.core.train.objective import SFT, Objective, add_stats, surrogate

DEFAULT_CHUNK_SIZE = 256  # rows projected at once: 256 x vocab fp32 logits at most


def _select_targets(hidden: Tensor, targets: Tensor, *streams: Tensor | None) -> tuple[Any, ...]:
    """Flatten to ``[N, H]``/``[N]`` and keep only rows that carry a target; per-token
    ``streams`` (None allowed) are flattened and selected the same way."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    keep = (targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    picked = [None if s is None else s.reshape(-1).to(hidden.device).index_select(0, keep) for s in streams]
    return (hidden.index_select(0, keep), targets.index_select(0, keep), *picked)


def _rows(stream: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if stream is None else stream[start:stop]


def _at_least_fp32(tensor: Tensor) -> Tensor:
    """bf16/fp16 up to fp32 for the softmax; fp32 and fp64 stay as they are."""
    import torch

    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _chunk_loss_and_grad_logits(logits: Tensor, targets: Tensor, objective: Objective = SFT,
                                sampler: Tensor | None = None, teacher: Tensor | None = None,
                                stats: dict[str, float] | None = None) -> tuple[Tensor, Tensor]:
    """Sum of the objective's loss over a chunk and d(sum)/d(logits), both fp32.

    One ``log_softmax`` (a single fused kernel, rows kept in cache) gives the targets'
    log-probs, and its exponential, taken in place, the gradient: d l_t / d z_t is
    onehot - softmax, scaled per row by the objective's d loss_t / d l_t (-1 for
    cross-entropy, which needs no scaling). A chunk costs two ``[rows, V]`` blocks
    (logits and log-probabilities) and about half the time of logsumexp, subtract, exp.
    """
    import torch

    log_probs = torch.log_softmax(_at_least_fp32(logits), dim=-1)
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    grad = log_probs.exp_()
    grad[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
    if objective is SFT:
        return -picked.sum(), grad
    terms = objective.terms(picked, sampler, teacher)
    if stats is not None:
        add_stats(stats, terms.stats)
    grad.mul_(terms.dloss.neg().to(grad.dtype)[:, None])
    return terms.loss.sum(), grad


class _FusedLinearCE:
    """Holder for the autograd Function (built lazily so torch imports stay inside)."""

    fn: type[torch.autograd.Function] | None = None

    @classmethod
    def get(cls) -> type[torch.autograd.Function]:
        if cls.fn is None:
            import torch

            class Fn(torch.autograd.Function):
                @staticmethod
                def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                            chunk_size: int, objective: Objective, sampler: Tensor | None,
                            teacher: Tensor | None, stats: dict[str, float]) -> Tensor:
                    n = hidden.shape[0]
                    acc = torch.promote_types(hidden.dtype, torch.float32)  # accumulation dtype
                    loss = torch.zeros((), dtype=acc, device=hidden.device)
                    grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
                    grad_weight = (torch.zeros(weight.shape, dtype=acc, device=weight.device)
                                   if ctx.needs_input_grad[1] else None)
                    grad_bias = (torch.zeros(bias.shape, dtype=acc, device=bias.device)
                                 if bias is not None and ctx.needs_input_grad[2] else None)
                    for start in range(0, n, chunk_size):
                        h = hidden[start:start + chunk_size]
                        w = weight.to(h.dtype)  # a no-op unless autocast left them apart
                        logits = h @ w.t()
                        if bias is not None:
                            logits = logits + bias
                        stop = start + chunk_size
                        chunk_loss, g = _chunk_loss_and_grad_logits(
                            logits, targets[start:stop], objective, _rows(sampler, start, stop),
                            _rows(teacher, start, stop), stats)
                        loss += chunk_loss
                        g_low = g.to(h.dtype)
                        if grad_hidden is not None:
                            grad_hidden[start:start + chunk_size] = g_low @ w
                        if grad_weight is not None:
                            grad_weight.addmm_(g.t(), h.to(acc))
                        if grad_bias is not None:
                            grad_bias += g.sum(0)
                    ctx.save_for_backward(
                        grad_hidden if grad_hidden is not None else torch.empty(0),
                        grad_weight.to(weight.dtype) if grad_weight is not None else torch.empty(0),
                        grad_bias.to(bias.dtype) if grad_bias is not None and bias is not None else torch.empty(0))
                    ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
                    return loss

                @staticmethod
                def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
                    saved = ctx.saved_tensors
                    out = [s * grad_output.to(s.dtype) if has else None for s, has in zip(saved, ctx.has)]
                    return out[0], out[1], out[2], None, None, None, None, None, None

            cls.fn = Fn
        return cls.fn


def fused_linear_loss(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, objective: Objective = SFT,
                      sampler: Tensor | None = None,
                      teacher: Tensor | None = None) -> tuple[Tensor, int, dict[str, float]]:
    """Sum of the objective's per-token loss of ``hidden @ weight.T (+ bias)`` on ``targets``.

    ``hidden`` ``[..., H]``; ``weight`` ``[V, H]``; ``targets`` ``[...]`` already shifted
    (see ``masks.shifted_targets``), -100 where there is no loss; ``sampler`` and
    ``teacher`` shaped like ``targets`` (the reverse-KL objective's inputs). Returns (loss
    sum as a 0-d fp32 tensor that back-propagates into hidden, weight and bias; target
    count; the objective's sums). Gradients are computed chunk by chunk in the forward
    pass, so peak extra memory is one ``[chunk_size, V]`` fp32 block plus a weight-sized
    fp32 gradient.
    """
    hidden, targets, sampler, teacher = _select_targets(hidden, targets, sampler, teacher)
    count = int(targets.numel())
    stats: dict[str, float] = {}
    if count == 0:
        return _at_least_fp32(hidden.sum() * 0.0 + weight.sum() * 0.0), 0, stats
    loss = _FusedLinearCE.get().apply(hidden, weight, bias, targets, chunk_size, objective,
                                      sampler, teacher, stats)
    return loss, count, stats


def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, int]:
    """:func:`fused_linear_loss` with cross-entropy: (loss sum, target count)."""
    loss, count, _ = fused_linear_loss(hidden, weight, targets, bias, chunk_size)
    return loss, count


def checkpointed_loss(hidden: Tensor, project: Callable[[Tensor], Tensor], targets: Tensor,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, objective: Objective = SFT,
                      sampler: Tensor | None = None,
                      teacher: Tensor | None = None) -> tuple[Tensor, int, dict[str, float]]:
    """Like :func:`fused_linear_loss`, for a projection given as a callable.

    Each chunk's logits are recomputed in backward (activation checkpointing), so only
    one chunk's logits exist at a time in either pass. The objective's loss and
    derivative enter autograd through :func:`~dasd_cli.core.train.objective.surrogate`.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden, targets, sampler, teacher = _select_targets(hidden, targets, sampler, teacher)
    count = int(targets.numel())
    stats: dict[str, float] = {}

    def chunk_ce(h: Tensor, t: Tensor) -> Tensor:
        logits = _at_least_fp32(project(h))
        return torch.nn.functional.cross_entropy(logits, t, reduction="sum")

    def chunk_objective(h: Tensor, t: Tensor, s: Tensor | None, q: Tensor | None) -> tuple[Tensor, Tensor]:
        # the stats leave as a detached output: the recompute in backward discards it
        picked = torch.log_softmax(_at_least_fp32(project(h)), dim=-1).gather(1, t[:, None]).squeeze(1)
        terms = objective.terms(picked, s, q)
        names = sorted(terms.stats)
        values = torch.stack([torch.as_tensor(terms.stats[k], dtype=torch.float64) for k in names]) \
            if names else torch.zeros(0)
        return surrogate(picked, terms), values.detach()

    total = _at_least_fp32(hidden.sum() * 0.0)  # keeps the graph connected with no targets
    for start in range(0, count, chunk_size):
        stop = start + chunk_size
        if objective is SFT:
            total = total + checkpoint(chunk_ce, hidden[start:stop], targets[start:stop], use_reentrant=False)
            continue
        chunk, values = checkpoint(chunk_objective, hidden[start:stop], targets[start:stop],
                                   _rows(sampler, start, stop), _rows(teacher, start, stop),
                                   use_reentrant=False)
        total = total + chunk
        names = sorted(objective.stat_names)
        add_stats(stats, dict(zip(names, values.tolist())))
    return total, count, stats


def checkpointed_cross_entropy(hidden: Tensor, project: Callable[[Tensor], Tensor], targets: Tensor,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, int]:
    """:func:`checkpointed_loss` with cross-entropy: (loss sum, target count)."""
    loss, count, _ = checkpointed_loss(hidden, project, targets, chunk_size)
    return loss, count


def count_targets(targets: Tensor) -> int:
    """Number of tokens that carry a loss in already-shifted ``targets``."""
    return int((targets != IGNORE_INDEX).sum())
