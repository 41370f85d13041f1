"""Sample isolation inside a packed sequence, derived from ``position_ids``.

A packed sequence holds several samples back to back; ``position_ids`` restart at 0 at
each one (DESIGN.md "Packed sequence"). A sample must never attend to its neighbours, so
attention is block-diagonal causal: token i sees token j only when j <= i and both lie
in the same sample. Resetting ``position_ids`` alone is not enough on the sdpa and eager
backends (they would still see the whole causal prefix); they need the 4D mask built
here. Flash-attention's varlen kernels take the same boundaries as ``cu_seqlens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # torch is imported on use: core loads without it
    import torch

# ``[L]`` or ``[B, L]`` integers: a tensor, or the lists of a packed record.
Positions = Union["torch.Tensor", Sequence[int], Sequence[Sequence[int]]]


def segment_ids(position_ids: Positions) -> torch.Tensor:
    """Which packed sample each token belongs to: ``[B, L]`` ints counting from 0.

    A new sample starts wherever a position is not its predecessor plus one (a restart
    at 0, or any other jump), which is exactly the packing contract.
    """
    import torch

    positions = torch.as_tensor(position_ids)
    if positions.ndim == 1:
        positions = positions.unsqueeze(0)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    return starts.long().cumsum(-1) - 1


def block_causal_mask(position_ids: Positions, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ``[B, 1, L, L]`` attention mask that keeps packed samples apart.

    With ``dtype=None`` the mask is boolean (True: may attend), the form sdpa takes.
    With a floating dtype it is additive (0 where allowed, the dtype's most negative
    value elsewhere), the form the eager backend adds to its scores. transformers
    passes a 4D mask through to the attention backend unchanged.
    """
    import torch

    seg = segment_ids(position_ids)
    length = seg.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # [B, L(query), L(key)]
    allowed = allowed[:, None, :, :]
    if dtype is None or dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def cu_seqlens(position_ids: Positions) -> tuple[torch.Tensor, int]:
    """Cumulative sample lengths ``[0, l1, l1+l2, ...]`` (int32) and the longest sample,
    flattened over the batch: the boundaries flash-attention's varlen kernels take."""
    import torch

    seg = segment_ids(position_ids)
    lengths = []
    for row in seg:
        lengths.append(torch.bincount(row))
    flat = torch.cat(lengths)
    cu = torch.zeros(flat.numel() + 1, dtype=torch.int32, device=flat.device)
    cu[1:] = flat.cumsum(0)
    return cu, int(flat.max()) if flat.numel() else 0


def shifted_targets(labels: Positions, position_ids: Positions) -> torch.Tensor:
    """Next-token targets: ``targets[i] = labels[i + 1]``, -100 where there is none.

    ``labels`` hold each token's own id (or -100); the model at position i predicts
    token i + 1. The last token of a sample must not learn to predict the first token
    of the next sample, so targets that cross a sample boundary are -100 too.
    """
    import torch

    label_ids = torch.as_tensor(labels)
    if label_ids.ndim == 1:
        label_ids = label_ids.unsqueeze(0)
    seg = segment_ids(position_ids).to(label_ids.device)
    targets = torch.full_like(label_ids, -100)
    same = seg[:, 1:] == seg[:, :-1]
    targets[:, :-1] = torch.where(same, label_ids[:, 1:], torch.full_like(label_ids[:, 1:], -100))
    return targets


def shifted_values(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Per-token values aligned with :func:`shifted_targets`: ``out[i] = values[i + 1]``
    (0 at the end of each row; positions whose target is -100 are never read)."""
    import torch

    values = torch.as_tensor(values)
    if values.ndim == 1:
        values = values.unsqueeze(0)
    out = torch.zeros_like(values)
    out[:, :-1] = values[:, 1:]
    return out
