"""Packed sequences through a causal LM with every sample isolated (scoring and training).

The model body (``model.get_decoder()``) gives hidden states; callers project them with
the output embedding themselves, chunk by chunk, so ``[tokens x vocab]`` logits are
never materialized. Isolation per attention backend:
- ``sdpa``: a boolean 4D block-diagonal causal mask;
- ``eager``: the same mask in additive float form (eager adds it to the scores);
- ``flash_attention_2/3``: no mask; transformers derives varlen ``cu_seqlens`` from the
  restarting ``position_ids``, which is exact for flash kernels;
- ``dasd_segmented`` (model.attention): no mask; causal sdpa per sample, from the
  same ``cu_seq_lens`` boundaries (linear memory in the number of samples).
transformers 5.x passes a 4D mask to the attention function unchanged
(``masking_utils._preprocess_mask_arguments`` returns early on ``ndim == 4``).
"""

from __future__ import annotations

from typing import Any

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
    logit soft-capping and no attention sinks. flash-attention's varlen kernels apply windows
    and soft-capping themselves.
    """
    from dasd_cli.model import attention

    problem = attention.unsupported(model.config, model)
    impl = getattr(model.config, "_attn_implementation", None)
    if problem is None or impl in ("flash_attention_2", "flash_attention_3"):
        return
    if impl == attention.NAME and ("soft-capping" in problem or "sinks" in problem):
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
