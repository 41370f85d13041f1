"""The training loss of one packed sequence: isolated hidden states, chunked cross-entropy.

The hidden states come from ``model.packed`` (samples isolated on every attention
backend); the loss projects them with the output embedding chunk by chunk
(core.train.loss), so ``[tokens x vocab]`` logits are never materialized.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dasd_cli.core.train import loss as loss_core
from dasd_cli.core.train import masks
from dasd_cli.model.packed import hidden_states

LossFn = Callable[[Any, Any, Any], tuple[Any, int]]


def make_loss_fn(model: Any, impl: str = "fused", chunk_size: int = loss_core.DEFAULT_CHUNK_SIZE) -> LossFn:
    """A ``(hidden, targets, model) -> (loss_sum, count)`` function.

    ``fused``: chunked fused linear CE on the head's weight (fast, one process or DDP);
    ``checkpointed``: the head module is called per chunk (ZeRO-3 gathers its weight);
    ``liger``: Liger's fused linear cross-entropy kernel (CUDA only).
    """
    if impl == "fused":
        def fused(hidden: Any, targets: Any, model: Any) -> tuple[Any, int]:
            head = model.get_output_embeddings()
            return loss_core.fused_linear_cross_entropy(hidden, head.weight, targets,
                                                        bias=getattr(head, "bias", None),
                                                        chunk_size=chunk_size)
        return fused
    if impl == "checkpointed":
        def checkpointed(hidden: Any, targets: Any, model: Any) -> tuple[Any, int]:
            return loss_core.checkpointed_cross_entropy(hidden, model.get_output_embeddings(), targets,
                                                        chunk_size=chunk_size)
        return checkpointed
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger_loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=loss_core.IGNORE_INDEX)

        def liger(hidden: Any, targets: Any, model: Any) -> tuple[Any, int]:
            head = model.get_output_embeddings()
            flat_hidden = hidden.reshape(-1, hidden.shape[-1])
            flat_targets = targets.reshape(-1).to(hidden.device)
            return (liger_loss(head.weight, flat_hidden, flat_targets, getattr(head, "bias", None)),
                    loss_core.count_targets(flat_targets))
        return liger
    raise ValueError(f"unknown loss implementation {impl!r}")


def packed_losses(model: Any, input_ids: Any, labels: Any, position_ids: Any, loss_fn: LossFn,
                  moe_blocks: list[Any] | None = None) -> tuple[Any, int, Any]:
    """Sum of next-token losses (nats) over the targets of one packed batch, their count,
    and the router load-balancing loss of a sparse model.

    Tensors are ``[B, L]`` on the model's device. Targets are shifted per sample and
    never cross a sample boundary (``masks.shifted_targets``).

    ``moe_blocks`` (model.moe.find_blocks): the routers' logits are recorded by hooks
    while the decoder body runs, and core.train.router turns them into the auxiliary
    loss over every token of the packed row (no padding in a packed row, so every row
    counts). The third value is None for a dense model.
    """
    targets = masks.shifted_targets(labels, position_ids)
    if not moe_blocks:
        hidden = hidden_states(model, input_ids, position_ids)
        return (*loss_fn(hidden, targets, model), None)
    from dasd_cli.core.train import router
    from dasd_cli.model import moe

    with moe.router_logits(model, moe_blocks) as logits:
        hidden = hidden_states(model, input_ids, position_ids)
    aux = router.load_balancing_loss(logits, moe_blocks[0].num_experts, moe.top_k(model, moe_blocks))
    return (*loss_fn(hidden, targets, model), aux)
