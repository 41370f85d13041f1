"""Tiny random Mixture-of-Experts models for the tests, and a per-expert-module layout.

transformers 5 stores every shipped family's experts as 3D parameters of one module;
``PerExpertMoe`` is the older layout (one ``nn.Module`` per expert in a ``ModuleList``,
as Mixtral and Qwen-MoE had before, and many remote-code models still have), built from
a Qwen3-MoE block with the same weights, so the two layouts compute the same function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FAMILIES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "gpt_oss", "granitemoe")
VOCAB = 97


def tiny_config(family: str, attn: str = "eager", experts: int = 8, top_k: int = 2):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  num_experts_per_tok=top_k, attn_implementation=attn)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**common, num_experts=experts, moe_intermediate_size=32, head_dim=8,
                                 norm_topk_prob=True)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**common, num_experts=experts, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=32)
    if family == "mixtral":
        return tf.MixtralConfig(**common, num_local_experts=experts)
    if family == "olmoe":
        return tf.OlmoeConfig(**common, num_experts=experts, eos_token_id=1, pad_token_id=0)
    if family == "gpt_oss":
        return tf.GptOssConfig(**common, num_local_experts=experts, head_dim=8, sliding_window=256,
                               layer_types=["full_attention"] * 2,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if family == "granitemoe":  # its router returns the logits third, not first
        return tf.GraniteMoeConfig(**common, num_local_experts=experts)
    raise ValueError(family)


def tiny_model(family: str, attn: str = "eager", seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, attn, **kwargs)).eval()


class Expert(nn.Module):
    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        inner, hidden = down.shape[1], down.shape[0]
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)
        with torch.no_grad():
            self.gate_up.weight.copy_(gate_up)
            self.down.weight.copy_(down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class PerExpertMoe(nn.Module):
    """Top-k routing over a ModuleList of experts; only the experts a token picked run."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        router, experts = block.gate, block.experts
        self.top_k, self.norm_topk_prob = router.top_k, router.norm_topk_prob
        self.gate = nn.Linear(router.hidden_dim, router.num_experts, bias=False)
        with torch.no_grad():
            self.gate.weight.copy_(router.weight)
        self.experts = nn.ModuleList(Expert(experts.gate_up_proj[e], experts.down_proj[e])
                                     for e in range(router.num_experts))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(flat), dim=-1, dtype=torch.float)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in chosen.unique().tolist():  # a rank runs only the experts its tokens chose
            rows, slot = torch.where(chosen == e)
            out = out.index_add(0, rows, self.experts[e](flat[rows]) * weights[rows, slot, None])
        return out.reshape(shape)


def to_per_expert(model: nn.Module) -> nn.Module:
    """Replace every Qwen3-MoE sparse block by the equivalent PerExpertMoe (in place)."""
    for layer in model.model.layers:
        layer.mlp = PerExpertMoe(layer.mlp)
    return model


def route_by_token(model: nn.Module, groups: dict[int, tuple[int, ...]], strength: float = 4.0) -> None:
    """Make token ``t``'s residual stream point at expert(s) ``groups[t % len(groups)]``.

    Each token's embedding gets a large component on the coordinates of its group's
    experts and every router row ``e`` reads coordinate ``e``, so which experts a token
    picks follows from its id in every layer: data drawn from different groups routes to
    different experts.
    """
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        for token in range(embed.shape[0]):
            for rank, e in enumerate(groups[token % len(groups)]):
                embed[token, e] += strength / (rank + 1)
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if type(module).__name__.endswith("TopKRouter") and weight is not None:
                weight.copy_(3.0 * torch.eye(*weight.shape))  # row e reads coordinate e


def save_with_tokenizer(model: nn.Module, folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", eos_token="t1").save_pretrained(folder)
    return folder
