"""Mixture-of-Experts structure of a loaded model: its sparse blocks, routers and experts.

Training (ZeRO-3 leaf modules, the router load-balancing loss) and the backends share
this. A sparse block is found from the loaded model itself, not from its class name: a
module with two children, the *experts* and a *router* (the gate), where

- the experts are either a ``ModuleList``/``ModuleDict`` of two or more modules of one
  class (one module per expert: Mixtral and Qwen-MoE before transformers 5, many remote
  code models), or one module whose own 3D parameters all start with the number of
  experts (transformers 5's fused ``*Experts`` modules, called once per forward);
- the router holds a 2D ``weight`` with one row per expert.

Only where discovery finds nothing is a table by ``model_type`` consulted (a block class
name for families whose layout the rule above does not see).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# model_type -> class name of the sparse block: the fallback when discovery finds none
BLOCK_CLASSES = {
    "qwen3_moe": "Qwen3MoeSparseMoeBlock",
    "qwen2_moe": "Qwen2MoeSparseMoeBlock",
    "mixtral": "MixtralSparseMoeBlock",
    "olmoe": "OlmoeSparseMoeBlock",
    "gpt_oss": "GptOssMLP",
    "deepseek_v3": "DeepseekV3MoE",
    "granitemoe": "GraniteMoeMoE",
}


@dataclass(frozen=True)
class MoeBlock:
    name: str  # dotted module path
    module: Any
    experts: Any  # the experts container
    router: Any  # the gate
    num_experts: int
    per_expert_modules: bool  # experts are separate modules (ZeRO-3 needs a leaf module)
    how: str = "found"  # "found" (from the module tree) or "table" (by model_type)


def _expert_count(child: Any) -> tuple[int, bool] | None:
    """(number of experts, one module per expert) when ``child`` looks like experts."""
    import torch.nn as nn

    if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
        members = list(child.children())
        if len(members) >= 2 and len({type(m) for m in members}) == 1 and \
                all(any(True for _ in m.parameters()) for m in members):
            return len(members), True
        return None
    stacked = [p for p in child.parameters(recurse=False) if p.ndim == 3]
    if stacked and len({p.shape[0] for p in stacked}) == 1 and stacked[0].shape[0] >= 2:
        return int(stacked[0].shape[0]), False
    return None


def _is_router(child: Any, num_experts: int) -> bool:
    weight = getattr(child, "weight", None)
    return getattr(weight, "ndim", 0) == 2 and weight.shape[0] == num_experts


def _block_at(name: str, module: Any) -> MoeBlock | None:
    children = list(module.named_children())
    for experts_name, experts in children:
        found = _expert_count(experts)
        if found is None:
            continue
        count, separate = found
        for router_name, router in children:
            if router_name != experts_name and _is_router(router, count):
                return MoeBlock(name, module, experts, router, count, separate)
    return None


def find_blocks(model: Any) -> list[MoeBlock]:
    """Every sparse block of ``model`` (empty for a dense model)."""
    import torch.nn as nn

    blocks = []
    for name, module in model.named_modules():
        block = _block_at(name, module)
        if block is not None:
            blocks.append(block)
    if blocks:
        return blocks
    wanted = BLOCK_CLASSES.get(getattr(getattr(model, "config", None), "model_type", None))
    for name, module in model.named_modules():
        if wanted and type(module).__name__ == wanted:
            experts = getattr(module, "experts", None)
            router = getattr(module, "gate", None) or getattr(module, "router", None)
            found = _expert_count(experts) if isinstance(experts, nn.Module) else None
            config = model.config
            count = found[0] if found else int(getattr(config, "num_experts", None)
                                               or getattr(config, "num_local_experts", 0))
            separate = isinstance(experts, (nn.ModuleList, nn.ModuleDict))
            blocks.append(MoeBlock(name, module, experts, router, count, separate, how="table"))
    return blocks


def top_k(model: Any, blocks: list[MoeBlock]) -> int:
    """Experts each token is routed to."""
    for source in (blocks[0].router, blocks[0].module, getattr(model, "config", None)):
        for attr in ("top_k", "num_experts_per_tok"):
            value = getattr(source, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    raise ValueError("cannot tell how many experts each token is routed to (no top_k)")


def config_aux_coef(model: Any) -> float | None:
    """The router load-balancing coefficient the model's config sets (None: none)."""
    value = getattr(getattr(model, "config", None), "router_aux_loss_coef", None)
    return float(value) if isinstance(value, (int, float)) else None


def leaf_classes(blocks: list[MoeBlock]) -> tuple[list[type], list[str]]:
    """Block classes ZeRO-3 must treat as leaf modules, and a line per decision.

    ZeRO-3 gathers a module's parameters when its forward starts. With one module per
    expert, a rank calls only the experts its tokens were routed to, so ranks gather
    different parameters and their collectives stop matching (a hang). A leaf block is
    gathered whole on entry on every rank. Fused experts (3D parameters of one module
    called on every forward) are gathered on every rank anyway.
    """
    classes: list[type] = []
    reasons: list[str] = []
    seen: set[type] = set()
    for block in blocks:
        cls = type(block.module)
        if cls in seen:
            continue
        seen.add(cls)
        count = sum(1 for b in blocks if type(b.module) is cls)
        where = f"{cls.__name__} ({count} block{'s' if count > 1 else ''}, e.g. {block.name}; {block.how})"
        if block.per_expert_modules:
            classes.append(cls)
            reasons.append(f"ZeRO-3 leaf module: {where}: {block.num_experts} experts are separate modules, "
                           "so ranks routing to different experts would gather different parameters")
        else:
            reasons.append(f"no ZeRO-3 leaf module for {where}: its {block.num_experts} experts are 3D "
                           f"parameters of one {type(block.experts).__name__} module, gathered on every call")
    return classes, reasons


def _router_index(model: Any, router: Any) -> int:
    """Which element of the router's output tuple holds the logits (transformers records it)."""
    recorders = getattr(model, "_can_record_outputs", None) or {}
    recorder = recorders.get("router_logits") if isinstance(recorders, dict) else None
    target = getattr(recorder, "target_class", None)
    if target is not None and isinstance(router, target):
        return int(getattr(recorder, "index", 0) or 0)
    return 0


@contextlib.contextmanager
def router_logits(model: Any, blocks: list[MoeBlock]) -> Iterator[list[Any]]:
    """Collect every router's logits ``[tokens, experts]`` during the forward passes inside.

    Forward hooks on the routers: the same tensors ``output_router_logits=True`` returns,
    also when the caller runs the decoder body rather than the model's own forward.
    """
    collected: list[Any] = []
    handles = []
    for block in blocks:
        index = _router_index(model, block.router)

        def hook(_module: Any, _inputs: Any, output: Any, index: int = index) -> None:
            logits = output[index] if isinstance(output, (tuple, list)) else output
            collected.append(logits.reshape(-1, logits.shape[-1]))

        handles.append(block.router.register_forward_hook(hook))
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()


# The experts kernel per device type where transformers' default is not the fastest: on
# CPU the per-expert loop ("eager") beats "grouped_mm" (the default) and "batched_mm"
# (bench/bench_moe.py compares the three). On CUDA the library default is kept.
FASTEST_EXPERTS = {"cpu": "eager"}


def use_fastest_experts(model: Any, device_type: str, blocks: list[MoeBlock] | None = None) -> str | None:
    """Switch a fused-experts model to the experts kernel of ``FASTEST_EXPERTS`` for this device.

    ``blocks``: the model's :func:`find_blocks`, when the caller has them. Returns the
    implementation now in use (None: not a model with selectable experts).
    """
    setter = getattr(model, "set_experts_implementation", None)
    current = getattr(getattr(model, "config", None), "_experts_implementation", None)
    if setter is None or current is None or not any(
            not b.per_expert_modules for b in (find_blocks(model) if blocks is None else blocks)):
        return None
    wanted = FASTEST_EXPERTS.get(device_type)
    if wanted and wanted != current:
        try:
            setter(wanted)
        except (ValueError, ImportError):
            return current
    return model.config._experts_implementation
