"""Tiny random Mixture-of-Experts models for the tests, a per-expert-module layout, and
their two-rank ZeRO-3 runs (tests/test_moe_zero3.py on CPU, tests/test_gpu.py on GPUs).

transformers 5 stores every shipped family's experts as 3D parameters of one module;
``PerExpertMoe`` is the older layout (one ``nn.Module`` per expert in a ``ModuleList``,
as Mixtral and Qwen-MoE had before, and many remote-code models still have), built from
a Qwen3-MoE block with the same weights, so the two layouts compute the same function.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import ROOT, free_port, routed_records, write_file

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


# ---------------------------------------------------------------- ZeRO-3 on two ranks
GROUPS = {0: (0, 1), 1: (2, 3), 2: (4, 5), 3: (6, 7)}  # token % 4 -> the experts it picks
RANK_TOKENS = ((0,), (2, 3))  # rank 0's records use experts 0-1; rank 1's, experts 4-7
def zero3_env() -> dict[str, str]:
    """This test's environment (read now, not at import) for ranks on CPU over gloo."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def zero3_config(folder: Path) -> Path:
    """configs/zero3.json, with every parameter partitioned (the shipped threshold keeps
    parameters under 1M elements whole on every rank, which is all of a tiny model)."""
    config = json.loads((ROOT / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3-all-partitioned.json"
    path.write_text(json.dumps(config))
    return path


def zero3_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Qwen3-MoE whose tokens route by residue, and packed data whose records for
    rank 0 and rank 1 use different experts: (model folder, data file)."""
    model = tiny_model("qwen3_moe")
    route_by_token(model, GROUPS)
    folder = save_with_tokenizer(model, tmp_path / "model")
    records = routed_records(4, seed=5, token_groups=RANK_TOKENS)
    data = write_file(tmp_path / "packed.jsonl", records)
    _check_ranks_route_apart(model, records)
    return folder, data


def _check_ranks_route_apart(model, records) -> None:
    """With --no-shuffle and 2 sequences a step, rank r trains records r, r + 2, ...: the
    experts their tokens pick (every layer, initial weights) must not overlap."""
    from dasd_cli.model import moe

    blocks = moe.find_blocks(model)
    used = {0: set(), 1: set()}
    for i, record in enumerate(records):
        with torch.no_grad(), moe.router_logits(model, blocks) as logits:
            model(input_ids=torch.tensor(record["input_ids"])[None])
        for layer in logits:
            used[i % 2] |= set(layer.topk(2, dim=-1).indices.flatten().tolist())
    assert used[0] == {0, 1} and used[1] == {4, 5, 6, 7}, used


def launch_two_ranks(args: list[str], timeout: float, port: int | None = None, env: dict[str, str] | None = None,
                     deepspeed: bool = False) -> subprocess.CompletedProcess | None:
    """torchrun with 2 ranks, or the deepspeed launcher on 2 GPUs (LOCAL_RANK from the
    environment, ``-m`` as its ``--module``); None when it runs past ``timeout`` (then its
    group is killed). ``port``: the rendezvous port, a free one by default; ``env``:
    :func:`zero3_env` by default."""
    port = free_port() if port is None else port
    env = zero3_env() if env is None else env
    if deepspeed:
        launcher = ["deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
                    "--no_local_rank", "--quiet"]
        args = ["--module", *args[1:]] if args[0] == "-m" else args
    else:
        launcher = ["torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", *launcher, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def zero3_train_args(model: Path, data: Path) -> list[str]:
    return ["train", "--model", str(model), "--epochs", "1", "--global-batch-size", "2", "--no-shuffle",
            "--dtype", "fp32", "--compress", "none", "--router-aux-loss-coef", "0.5", "--data", str(data)]


def compare_steps(want: list[dict], got: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["aux_loss"] == pytest.approx(a["aux_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def metrics_lines(stdout: bytes) -> list[dict]:
    return [json.loads(line[len("METRICS "):]) for line in stdout.decode().splitlines()
            if line.startswith("METRICS ")]


def rank_script(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The arguments that run tests/moe_zero3_run.py (per-expert layout) as one rank."""
    script = Path(__file__).resolve().parent / "moe_zero3_run.py"
    return [str(script), str(model), str(data), str(out), "--per-expert", *extra]
