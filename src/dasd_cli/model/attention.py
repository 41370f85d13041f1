"""``segmented`` attention: each packed sample attends within itself, one kernel call each.

The sdpa and eager backends isolate packed samples with a ``[L, L]`` block-diagonal mask
(model.packed.attention_inputs), which costs memory and compute quadratic in the whole packed
length: with a custom mask, CPU sdpa takes its math path and keeps every layer's
``[heads, L, L]`` attention weights for backward. This backend instead slices queries,
keys and values at the sample boundaries (``cu_seq_lens_q``, the varlen boundaries
flash-attention takes) and runs causal sdpa per sample: cost sum(Li^2) instead of L^2,
no mask tensor, and sdpa's fused causal kernels. It is registered with transformers'
``AttentionInterface`` under the name ``dasd_segmented``.
"""

from __future__ import annotations

import weakref
from typing import Any

NAME = "dasd_segmented"


def segmented_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                        scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention within each packed sample; output ``[B, L, H, D]`` like sdpa's."""
    import torch
    import torch.nn.functional as F

    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None:
        # Not a packed call (a single unpadded sequence, as in an evaluation): one sample.
        # transformers builds no mask for this backend, so padded batches are refused.
        if query.shape[0] != 1:
            raise ValueError(f"{NAME} attention without sample boundaries takes one sequence")
        boundaries = torch.tensor([0, query.shape[2]])
    if query.shape[0] != 1:
        raise ValueError(f"{NAME} attention takes one packed sequence per micro-batch")
    gqa = query.shape[1] != key.shape[1]
    edges = boundaries.tolist()
    sizes = [end - start for start, end in zip(edges[:-1], edges[1:])]
    if edges[-1] != query.shape[2]:
        raise ValueError(f"{NAME} attention: sample boundaries end at {edges[-1]}, not at {query.shape[2]}")
    # split, not slicing: its backward is one concatenation of the samples' gradients, where
    # each slice's backward would zero-fill a full-length gradient and add it up.
    parts = zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
    # each output is transposed to [B, Li, H, D] before the concatenation, which then
    # writes the layout the caller wants in one copy (sdpa's CPU and CUDA kernels lay
    # their output out that way, so the transposes are free).
    outputs = [F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                              dropout_p=dropout if module.training else 0.0,
                                              enable_gqa=gqa).transpose(1, 2)
               for q, k, v in parts]
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return out.contiguous(), None


_SINKS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _has_sinks(model: Any) -> bool:
    """Whether any module holds attention sinks; walked once per model (training asks on
    every micro-batch, and a per-expert MoE model has tens of thousands of modules)."""
    if not hasattr(model, "modules"):
        return False
    try:
        return _SINKS[model]
    except KeyError:
        found = _SINKS[model] = any(getattr(m, "sinks", None) is not None for m in model.modules())
        return found


def unsupported(config: Any, model: Any = None) -> str | None:
    """What in this model's attention the segmented kernel would drop (None: nothing).

    It runs plain causal attention: sliding windows, logit soft-capping and attention
    sinks (gpt-oss: a learned per-head logit in every softmax) are not in it.
    """
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    if model is not None and _has_sinks(model):
        return "attention sinks"
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if any(kind != "full_attention" for kind in layer_types):
            return "sliding-window layers"
    elif getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    return None


def register() -> str:
    """Make ``attn_implementation="dasd_segmented"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segmented_attention)
    return NAME
