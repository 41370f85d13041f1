"""Token-weighted cross-entropy computed in chunks, so ``[tokens x vocab]`` logits
never exist all at once.

The model body gives hidden states ``[N, H]``; the output projection (``lm_head``) is
applied ``chunk_size`` rows at a time. Only rows that have a target (not -100) are
projected at all: prompt tokens cost nothing here. Both functions return the SUM of
per-token losses (nats) and the number of target tokens; the caller divides by the
target-token count of the whole global batch, so packed and unpacked training on the
same samples give the same loss and gradients.

Two implementations:
- :func:`fused_linear_cross_entropy` computes the gradient chunk by chunk during the
  forward pass (a custom autograd function): one projection per chunk, no recompute.
  It needs the projection weight as a tensor.
- :func:`checkpointed_cross_entropy` calls a projection callable (the ``lm_head``
  module) per chunk under activation checkpointing, recomputing the chunk's logits in
  backward. Slower, but module hooks fire on every call, which DeepSpeed ZeRO-3 needs
  to gather a partitioned weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on use: core loads without it
    import torch
    from torch import Tensor

from dasd_cli.core.chat import IGNORE_INDEX

DEFAULT_CHUNK_SIZE = 256  # rows projected at once: 256 x vocab fp32 logits at most


def _select_targets(hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten to ``[N, H]``/``[N]`` and keep only rows that carry a target."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    keep = (targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    return hidden.index_select(0, keep), targets.index_select(0, keep)


def _at_least_fp32(tensor: Tensor) -> Tensor:
    """bf16/fp16 up to fp32 for the softmax; fp32 and fp64 stay as they are."""
    import torch

    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _chunk_loss_and_grad_logits(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of CE over a chunk and d(sum)/d(logits) = softmax - onehot, both fp32.

    One ``log_softmax`` (a single fused kernel, rows kept in cache) gives the loss, and
    its exponential, taken in place, the gradient: a chunk costs two ``[rows, V]`` blocks
    (logits and log-probabilities) and about half the time of logsumexp, subtract, exp.
    """
    import torch

    log_probs = torch.log_softmax(_at_least_fp32(logits), dim=-1)
    loss = -log_probs.gather(1, targets[:, None]).sum()
    grad = log_probs.exp_()
    grad[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
    return loss, grad


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
                            chunk_size: int) -> Tensor:
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
                        chunk_loss, g = _chunk_loss_and_grad_logits(logits, targets[start:start + chunk_size])
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
                    return out[0], out[1], out[2], None, None

            cls.fn = Fn
        return cls.fn


def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, int]:
    """Sum of next-token CE of ``hidden @ weight.T (+ bias)`` against ``targets``.

    ``hidden`` ``[..., H]``; ``weight`` ``[V, H]``; ``targets`` ``[...]`` already shifted
    (see ``masks.shifted_targets``), -100 where there is no loss. Returns (loss sum as a
    0-d fp32 tensor that back-propagates into hidden, weight and bias; target count).
    Gradients are computed chunk by chunk in the forward pass, so peak extra memory is
    one ``[chunk_size, V]`` fp32 block plus a weight-sized fp32 gradient.
    """
    hidden, targets = _select_targets(hidden, targets)
    count = int(targets.numel())
    if count == 0:
        return _at_least_fp32(hidden.sum() * 0.0 + weight.sum() * 0.0), 0
    loss = _FusedLinearCE.get().apply(hidden, weight, bias, targets, chunk_size)
    return loss, count


def checkpointed_cross_entropy(hidden: Tensor, project: Callable[[Tensor], Tensor], targets: Tensor,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Tensor, int]:
    """Like :func:`fused_linear_cross_entropy`, for a projection given as a callable.

    Each chunk's logits are recomputed in backward (activation checkpointing), so only
    one chunk's logits exist at a time in either pass.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden, targets = _select_targets(hidden, targets)
    count = int(targets.numel())

    def chunk_loss(h: Tensor, t: Tensor) -> Tensor:
        logits = _at_least_fp32(project(h))
        return torch.nn.functional.cross_entropy(logits, t, reduction="sum")

    total = _at_least_fp32(hidden.sum() * 0.0)  # keeps the graph connected with no targets
    for start in range(0, count, chunk_size):
        total = total + checkpoint(chunk_loss, hidden[start:start + chunk_size],
                                   targets[start:start + chunk_size], use_reentrant=False)
    return total, count


def count_targets(targets: Tensor) -> int:
    """Number of tokens that carry a loss in already-shifted ``targets``."""
    return int((targets != IGNORE_INDEX).sum())
