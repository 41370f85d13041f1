"""One packed sequence through a causal LM, samples isolated, loss summed over targets.

The model body (``model.get_decoder()``) gives hidden states; the chunked loss projects
them with the output embedding chunk by chunk (core.train.loss), so ``[tokens x vocab]``
logits are never materialized. Isolation per attention backend:
- ``sdpa``: a boolean 4D block-diagonal causal mask;
- ``eager``: the same mask in additive float form (eager adds it to the scores);
- ``flash_attention_2/3``: no mask; transformers derives varlen ``cu_seqlens`` from the
  restarting ``position_ids``, which is exact for flash kernels;
- ``dasd_segmented`` (training.attention): no mask; causal sdpa per sample, from the
  same ``cu_seq_lens`` boundaries (linear memory in the number of samples).
transformers 5.x passes a 4D mask to the attention function unchanged
(``masking_utils._preprocess_mask_arguments`` returns early on ``ndim == 4``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dasd_cli.core.train import loss as loss_core
from dasd_cli.core.train import masks
from dasd_cli.errors import UsageError

MASKED_BACKENDS = ("sdpa", "eager")
VARLEN_BACKENDS = ("flash_attention_2", "flash_attention_3", "dasd_segmented")


def attention_inputs(model: Any, position_ids: Any, dtype: Any) -> Any:
    """The ``attention_mask`` argument that isolates packed samples on this model's backend."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return masks.block_causal_mask(position_ids)
    if impl == "eager":
        return masks.block_causal_mask(position_ids, dtype=dtype)
    if impl in VARLEN_BACKENDS:
        return None
    raise UsageError(f"attention backend {impl!r} cannot isolate packed samples",
                     hint="use --attn segmented, sdpa, eager or flash_attention_2")


def refuse_dropped_attention(model: Any, position_ids: Any) -> None:
    """Fail where this backend would silently drop part of the model's attention.

    The block mask and the segmented kernel are plain causal attention: a sliding window
    is exact only for samples no longer than the window, and segmented attention has no
    logit soft-capping. flash-attention's varlen kernels apply both themselves.
    """
    from dasd_cli.training import attention

    problem = attention.unsupported(model.config)
    impl = getattr(model.config, "_attn_implementation", None)
    if problem is None or impl in ("flash_attention_2", "flash_attention_3"):
        return
    if impl == attention.NAME and "soft-capping" in problem:
        raise UsageError(f"--attn segmented has no {problem}, which this model uses",
                         hint="use --attn eager (or flash_attention_2 on a GPU)")
    window = getattr(model.config, "sliding_window", None)
    longest = masks.cu_seqlens(position_ids)[1]
    if window and longest > window:
        raise UsageError(f"a {longest}-token sample is longer than this model's {window}-token sliding "
                         f"window, which attention {impl!r} does not apply",
                         hint=f"pack with --cutoff-len {window} or less, or use --attn flash_attention_2 on a GPU")


def hidden_states(model: Any, input_ids: Any, position_ids: Any) -> Any:
    """Last hidden states ``[B, L, H]`` of the model body for packed ``input_ids``."""
    import torch

    refuse_dropped_attention(model, position_ids)
    body = model.get_decoder()
    compute_dtype = torch.get_autocast_dtype(input_ids.device.type) if torch.is_autocast_enabled(
        input_ids.device.type) else next(model.parameters()).dtype
    mask = attention_inputs(model, position_ids, compute_dtype)
    extra = {}
    if getattr(model.config, "_attn_implementation", None) in VARLEN_BACKENDS:
        boundaries, longest = masks.cu_seqlens(position_ids)
        extra = {"cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries,
                 "max_length_q": longest, "max_length_k": longest}
    out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def packed_logits(model: Any, input_ids: Any, position_ids: Any) -> Any:
    """Full logits of a packed sequence with isolation (for tests and small checks only)."""
    hidden = hidden_states(model, input_ids, position_ids)
    return model.get_output_embeddings()(hidden)


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


def packed_loss_sum(model: Any, input_ids: Any, labels: Any, position_ids: Any,
                    loss_fn: LossFn) -> tuple[Any, int]:
    """Sum of next-token losses (nats) over the targets of one packed batch, and their count.

    Tensors are ``[B, L]`` on the model's device. Targets are shifted per sample and
    never cross a sample boundary (``masks.shifted_targets``).
    """
    targets = masks.shifted_targets(labels, position_ids)
    hidden = hidden_states(model, input_ids, position_ids)
    return loss_fn(hidden, targets, model)
