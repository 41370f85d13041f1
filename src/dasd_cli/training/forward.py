"""The training loss of one packed sequence: isolated hidden states, a chunked loss.

The hidden states come from ``model.packed`` (samples isolated on every attention
backend); the loss projects them with the output embedding chunk by chunk
(core.train.loss), so ``[tokens x vocab]`` logits are never materialized. What each
target token's loss is comes from the objective (core.train.objective): cross-entropy,
or on-policy reverse KL, which also reads the packed sequence's log-prob streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dasd_cli.core.train import loss as loss_core
from dasd_cli.core.train import masks
from dasd_cli.core.train.objective import SFT
from dasd_cli.model.packed import hidden_states

# (hidden, targets, model, sampler, teacher) -> (loss sum, target count, objective's sums)
LossFn = Callable[..., tuple[Any, int, dict[str, float]]]


def make_loss_fn(model: Any, impl: str = "fused", chunk_size: int = loss_core.DEFAULT_CHUNK_SIZE,
                 objective: Any = SFT) -> LossFn:
    """A ``(hidden, targets, model, sampler=None, teacher=None) -> (loss_sum, count, stats)``
    function for ``objective``.

    ``fused``: chunked fused linear loss on the head's weight (fast, one process or DDP);
    ``checkpointed``: the head module is called per chunk (ZeRO-3 gathers its weight);
    ``liger``: Liger's fused linear cross-entropy kernel (CUDA only; SFT only).
    """
    if impl == "fused":
        def fused(hidden: Any, targets: Any, model: Any, sampler: Any = None,
                  teacher: Any = None) -> tuple[Any, int, dict[str, float]]:
            head = model.get_output_embeddings()
            return loss_core.fused_linear_loss(hidden, head.weight, targets, bias=getattr(head, "bias", None),
                                               chunk_size=chunk_size, objective=objective,
                                               sampler=sampler, teacher=teacher)
        return fused
    if impl == "checkpointed":
        def checkpointed(hidden: Any, targets: Any, model: Any, sampler: Any = None,
                         teacher: Any = None) -> tuple[Any, int, dict[str, float]]:
            return loss_core.checkpointed_loss(hidden, model.get_output_embeddings(), targets,
                                               chunk_size=chunk_size, objective=objective,
                                               sampler=sampler, teacher=teacher)
        return checkpointed
    if impl == "liger":
        if objective is not SFT:
            raise ValueError("the liger loss computes cross-entropy only")
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger_loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=loss_core.IGNORE_INDEX)

        def liger(hidden: Any, targets: Any, model: Any, sampler: Any = None,
                  teacher: Any = None) -> tuple[Any, int, dict[str, float]]:
            head = model.get_output_embeddings()
            flat_hidden = hidden.reshape(-1, hidden.shape[-1])
            flat_targets = targets.reshape(-1).to(hidden.device)
            return (liger_loss(head.weight, flat_hidden, flat_targets, getattr(head, "bias", None)),
                    loss_core.count_targets(flat_targets), {})
        return liger
    raise ValueError(f"unknown loss implementation {impl!r}")


def packed_losses(model: Any, input_ids: Any, labels: Any, position_ids: Any, loss_fn: LossFn,
                  moe_blocks: list[Any] | None = None, sampler: Any = None,
                  teacher: Any = None) -> tuple[Any, int, Any, dict[str, float]]:
    """Sum of next-token losses (nats) over the targets of one packed batch, their count,
    the router load-balancing loss of a sparse model, and the objective's sums.

    Tensors are ``[B, L]`` on the model's device. Targets are shifted per sample and
    never cross a sample boundary (``masks.shifted_targets``); the log-prob streams
    ``sampler`` and ``teacher`` (on-policy data: the log-prob of token i at i) are
    shifted with them (``masks.shifted_values``).

    ``moe_blocks`` (model.moe.find_blocks): the routers' logits are recorded by hooks
    while the decoder body runs, and core.train.router turns them into the auxiliary
    loss over every token of the packed row (no padding in a packed row, so every row
    counts). The third value is None for a dense model.
    """
    targets = masks.shifted_targets(labels, position_ids)
    streams = [None if s is None else masks.shifted_values(s) for s in (sampler, teacher)]
    if not moe_blocks:
        hidden = hidden_states(model, input_ids, position_ids)
        summed, count, stats = loss_fn(hidden, targets, model, *streams)
        return summed, count, None, stats
    from dasd_cli.core.train import router
    from dasd_cli.model import moe

    with moe.router_logits(model, moe_blocks) as logits:
        hidden = hidden_states(model, input_ids, position_ids)
    aux = router.load_balancing_loss(logits, moe_blocks[0].num_experts, moe.top_k(model, moe_blocks))
    summed, count, stats = loss_fn(hidden, targets, model, *streams)
    return summed, count, aux, stats
