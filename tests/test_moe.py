"""Mixture-of-Experts students: block discovery, router aux loss, packing, ZeRO-3 on 2 ranks."""

from __future__ import annotations


import pytest
import torch

from moe_models import FAMILIES, PerExpertMoe, save_with_tokenizer, tiny_model, to_per_expert
from helpers import make_samples, make_tiny_model, make_trainer, pack, packed_records, routed_records, tiny_llama
from dasd_cli.core.train import router
from dasd_cli.model import moe
from dasd_cli.model import packed as packed_forward

LENGTHS = (7, 12, 5)


# ---------------------------------------------------------------- discovery
@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_are_found_from_the_loaded_model(family):
    model = tiny_model(family)
    blocks = moe.find_blocks(model)
    where = "block_sparse_moe" if family == "granitemoe" else "mlp"
    assert [b.name for b in blocks] == [f"model.layers.{i}.{where}" for i in range(2)]
    assert all(b.num_experts == 8 and not b.per_expert_modules and b.how == "found" for b in blocks)
    assert moe.top_k(model, blocks) == 2
    classes, reasons = moe.leaf_classes(blocks)
    assert classes == [] and "no ZeRO-3 leaf module" in reasons[0]  # fused: gathered on every call


def test_the_table_by_model_type_is_the_fallback():
    """A router that keeps its weight in a submodule is not recognised from the module tree;
    the model type's table entry names the block class."""

    class WrappedRouter(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden):
            return self.inner(hidden)

    model = tiny_model("qwen3_moe")
    for layer in model.model.layers:
        layer.mlp.gate = WrappedRouter(layer.mlp.gate)
    blocks = moe.find_blocks(model)
    assert [(b.name, b.how, b.num_experts) for b in blocks] == [
        ("model.layers.0.mlp", "table", 8), ("model.layers.1.mlp", "table", 8)]
    assert isinstance(blocks[0].router, WrappedRouter)
    model.config.model_type = "unknown_moe"
    assert moe.find_blocks(model) == []


def test_per_expert_modules_become_leaf_modules():
    model = to_per_expert(tiny_model("qwen3_moe"))
    blocks = moe.find_blocks(model)
    assert len(blocks) == 2 and all(b.per_expert_modules for b in blocks)
    classes, reasons = moe.leaf_classes(blocks)
    assert classes == [PerExpertMoe]
    assert reasons[0].startswith("ZeRO-3 leaf module: PerExpertMoe (2 blocks")


def test_dense_models_have_no_blocks():
    assert moe.find_blocks(tiny_llama("sdpa")) == []


def test_per_expert_layout_computes_the_same_function():
    fused = tiny_model("qwen3_moe")
    per_expert = to_per_expert(tiny_model("qwen3_moe"))
    ids = torch.randint(2, 97, (1, 11))
    with torch.no_grad():
        assert torch.allclose(fused(input_ids=ids).logits, per_expert(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_runs_the_eager_experts_kernel(family):
    """bench/bench_moe.py: on CPU the eager experts loop beats grouped_mm (the library's
    default); the switch changes speed, not results."""
    model = tiny_model(family)
    ids = torch.randint(2, 97, (1, 13))
    assert model.config._experts_implementation == "grouped_mm"
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert moe.use_fastest_experts(model, "cpu") == "eager"
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)
    assert moe.use_fastest_experts(model, "cuda") == "eager"  # no CUDA preference: left as it is


def test_dense_and_per_expert_models_have_no_experts_kernel():
    assert moe.use_fastest_experts(tiny_llama("sdpa"), "cpu") is None
    assert moe.use_fastest_experts(to_per_expert(tiny_model("qwen3_moe")), "cpu") is None


# ---------------------------------------------------------------- aux loss
@pytest.mark.parametrize("family", FAMILIES)
def test_aux_loss_matches_the_models_own_forward(family):
    """Router logits recorded by hooks on the body, with padding masked out, give the
    aux loss of the model's forward with output_router_logits."""
    model = tiny_model(family)
    blocks = moe.find_blocks(model)
    ids = torch.randint(2, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    with torch.no_grad(), moe.router_logits(model, blocks) as logits:
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    assert len(logits) == 2
    mine = router.load_balancing_loss(logits, 8, 2, mask)
    assert float(mine) == pytest.approx(float(out.aux_loss), rel=1e-6)
    unmasked = router.load_balancing_loss(logits, 8, 2)
    assert abs(float(unmasked) - float(out.aux_loss)) > 1e-6  # the mask matters: the check can fail


def _packed(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    samples = [torch.randint(3, 97, (n,), generator=gen) for n in LENGTHS]
    return samples, torch.cat(samples)[None], torch.cat([torch.arange(n) for n in LENGTHS])[None]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize("attn", ["segmented", "sdpa"])
def test_packed_routing_and_logits_are_isolated(family, attn):
    """Every token of a packed row routes and predicts as in its sample alone; the row's
    aux loss is the one of the samples batched with padding masked out."""
    from dasd_cli.model import attention

    model = tiny_model(family, attn=attention.register() if attn == "segmented" else attn)
    blocks = moe.find_blocks(model)
    samples, ids, positions = _packed()
    with torch.no_grad():
        with moe.router_logits(model, blocks) as packed_routes:
            packed = packed_forward.packed_logits(model, ids, positions)[0]
        start = 0
        for sample in samples:
            with moe.router_logits(model, blocks) as alone_routes:
                alone = model(input_ids=sample[None]).logits[0]
            end = start + len(sample)
            assert float((packed[start:end] - alone).abs().max()) <= 1e-4
            for layer_packed, layer_alone in zip(packed_routes, alone_routes):
                assert torch.allclose(layer_packed[start:end], layer_alone, atol=1e-5)
            start = end
        longest = max(LENGTHS)
        batch = torch.zeros(len(samples), longest, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for i, sample in enumerate(samples):  # right-padded batch of the same samples
            batch[i, :len(sample)], mask[i, :len(sample)] = sample, 1
        model.set_attn_implementation("sdpa")  # a padded batch needs a masking backend
        with moe.router_logits(model, blocks) as batch_routes:
            out = model(input_ids=batch, attention_mask=mask, output_router_logits=True)
    aux_packed = router.load_balancing_loss(packed_routes, 8, 2)
    assert float(aux_packed) == pytest.approx(float(out.aux_loss), rel=1e-5)
    assert float(router.load_balancing_loss(batch_routes, 8, 2, mask)) == pytest.approx(float(aux_packed), rel=1e-5)


# ---------------------------------------------------------------- training
def test_train_logs_the_models_aux_loss_and_applies_the_coefficient(tmp_path):
    model_dir = save_with_tokenizer(tiny_model("qwen3_moe"), tmp_path / "model")
    records = routed_records(1, seed=3, per_record=1)  # one sample: the model's own forward sees the same row
    runs = {}
    for coef in (None, 0.0, 5.0):
        trainer = make_trainer(model_dir, tmp_path / f"out-{coef}", records, epochs=1, global_batch_size=1,
                           router_aux_loss_coef=coef)
        runs[coef] = list(trainer.train())[0]
    reference = tiny_model("qwen3_moe")
    ids = torch.tensor(records[0]["input_ids"])[None]
    with torch.no_grad():
        own = reference(input_ids=ids, output_router_logits=True).aux_loss
    for metrics in runs.values():
        assert "aux_loss" in metrics
    assert runs[None]["aux_loss_coef"] == 0.001  # the config's own value by default
    assert runs[5.0]["aux_loss_coef"] == 5.0
    assert runs[0.0]["aux_loss"] == pytest.approx(runs[5.0]["aux_loss"], rel=1e-6)
    assert runs[0.0]["loss"] == pytest.approx(runs[5.0]["loss"], rel=1e-6)  # loss: the LM loss alone
    assert runs[5.0]["grad_norm"] != pytest.approx(runs[0.0]["grad_norm"], rel=1e-3)  # the aux loss trains
    assert runs[0.0]["aux_loss"] == pytest.approx(float(own), rel=1e-5)


def test_aux_coef_on_a_dense_model_is_refused(tmp_path):
    from dasd_cli.errors import UsageError

    model = make_tiny_model(tmp_path / "model")
    with pytest.raises(UsageError, match="no routed experts"):
        make_trainer(model, tmp_path / "out", packed_records(make_samples(2), 1), router_aux_loss_coef=0.01)


def test_packed_equals_unpacked_lm_loss_on_moe(tmp_path):
    model_dir = save_with_tokenizer(tiny_model("qwen3_moe"), tmp_path / "model")
    samples = make_samples(4)
    losses = {}
    for name, records in (("packed", [pack(samples)]), ("unpacked", packed_records(samples, 1))):
        trainer = make_trainer(model_dir, tmp_path / name, records, epochs=1, global_batch_size=len(records),
                           shuffle=False, router_aux_loss_coef=0.0)
        losses[name] = list(trainer.train())[0]
    assert losses["packed"]["target_tokens"] == losses["unpacked"]["target_tokens"]
    assert abs(losses["packed"]["loss"] - losses["unpacked"]["loss"]) <= 1e-5
    assert losses["packed"]["grad_norm"] == pytest.approx(losses["unpacked"]["grad_norm"], rel=1e-4)


def test_gradient_checkpointing_keeps_loss_aux_and_gradients(tmp_path):
    """Router hooks fire once per forward; the recompute in backward records nothing."""
    model_dir = save_with_tokenizer(tiny_model("qwen3_moe"), tmp_path / "model")
    records = routed_records(2, seed=4)
    runs = []
    for checkpointing in (False, True):
        trainer = make_trainer(model_dir, tmp_path / f"out-{checkpointing}", records, epochs=1, global_batch_size=2,
                           shuffle=False, router_aux_loss_coef=0.1, gradient_checkpointing=checkpointing)
        runs.append(list(trainer.train())[0])
    for key in ("loss", "aux_loss", "grad_norm"):
        assert runs[1][key] == pytest.approx(runs[0][key], rel=1e-5), key


def test_debug_says_what_was_found(tmp_path, capfd):
    model_dir = save_with_tokenizer(tiny_model("qwen3_moe"), tmp_path / "model")
    make_trainer(model_dir, tmp_path / "out", routed_records(1, seed=1), debug=True)
    err = capfd.readouterr().err
    assert ("dasd train: 2 sparse blocks of 8 experts, top-2; router aux loss coefficient 0.001 "
            "(the model config); experts kernel eager") in err


def test_gpt_oss_attention_sinks_are_not_dropped(tmp_path):
    """Segmented attention has no sinks: dropping them would change gpt-oss's logits, so it
    is refused, and --attn auto trains gpt-oss with eager attention and the block mask
    (exact)."""
    from dasd_cli.errors import UsageError
    from dasd_cli.model import attention

    model = tiny_model("gpt_oss", attn=attention.register())
    with torch.no_grad():
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.sinks, std=2.0)
    samples, ids, positions = _packed()
    with pytest.raises(UsageError, match="segmented has no attention sinks"):
        packed_forward.packed_logits(model, ids, positions)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        packed = packed_forward.packed_logits(model, ids, positions)[0]
        alone = model(input_ids=samples[1][None]).logits[0]
    assert float((packed[7:19] - alone).abs().max()) <= 1e-4
    from dasd_cli.backends.hf_score import _packable

    assert not _packable(model)  # scoring takes padded batches instead of segmented rows
    assert _packable(tiny_model("qwen3_moe", attn="sdpa"))
    folder = save_with_tokenizer(model, tmp_path / "gpt-oss")
    trainer = make_trainer(folder, tmp_path / "out", routed_records(1, seed=2), attn="auto")
    assert trainer.model.config._attn_implementation == "eager"
