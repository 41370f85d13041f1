"""The router load-balancing (auxiliary) loss of Mixture-of-Experts training.

The Switch Transformer loss transformers applies in ``load_balancing_loss_func`` (the
same in Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, gpt-oss): over every routed row of every
layer, ``E * sum_e f_e * P_e`` where ``f_e`` is the number of top-k assignments to
expert ``e`` per row and ``P_e`` the mean router probability of ``e``. Rows are tokens;
a row whose weight is 0 (padding) counts in neither.

It is a statistic of a whole batch, not a sum over tokens: f and P are means over all of
its rows. A packed sequence has no padding, so its loss is the one of its samples batched
side by side with the padding masked out (tests/test_moe.py checks this against the
model's own forward). Routing itself is per token and isolated like everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: core loads without it
    import torch


def load_balancing_loss(layer_logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                        row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``E * sum_e f_e * P_e`` over the rows of every layer's ``[rows, experts]`` logits.

    ``row_weights``: ``[rows]`` 1 for a real token, 0 for padding (None: all real).
    Accumulated layer by layer, so memory stays one layer's ``[rows, experts]``.
    """
    import torch

    if not layer_logits:
        raise ValueError("no router logits were recorded")
    device = layer_logits[0].device
    assigned = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probability = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    for logits in layer_logits:
        probs = torch.softmax(logits.to(device).float(), dim=-1)
        chosen = probs.topk(top_k, dim=-1).indices
        weight = (torch.ones(probs.shape[0], device=device) if row_weights is None
                  else row_weights.reshape(-1).to(device=device, dtype=torch.float32))
        assigned = assigned.index_add(0, chosen.reshape(-1), weight.repeat_interleave(top_k))
        probability = probability + (probs * weight[:, None]).sum(dim=0)
        rows = rows + weight.sum()
    return num_experts * torch.sum((assigned / rows) * (probability / rows))
