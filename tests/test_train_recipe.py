"""The training recipe on a tiny random Llama: parity, schedule, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import (make_samples, make_tiny_model, make_trainer, pack, packed_records, parse_records, run_dasd,
                     write_file)
from dasd_cli.core.train.schedule import Schedule


@pytest.mark.parametrize("attn", ["segmented", "sdpa", "eager"])
def test_one_step_packed_equals_unpacked(tmp_path, attn):
    model = make_tiny_model(tmp_path / "model")
    samples = make_samples(5)
    runs = {}
    for name, records in (("packed", [pack(samples)]), ("unpacked", packed_records(samples, 1))):
        trainer = make_trainer(model, tmp_path / name, records, epochs=1, global_batch_size=len(records),
                           shuffle=False, attn=attn)
        grads = {}
        step_optimizer = trainer._optimizer_step

        def capture(trainer=trainer, grads=grads, step_optimizer=step_optimizer):
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})
            return step_optimizer()

        trainer._optimizer_step = capture
        metrics = list(trainer.train())
        assert len(metrics) == 1
        runs[name] = (metrics[0], grads, {n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    (m_packed, g_packed, p_packed), (m_unpacked, g_unpacked, p_unpacked) = runs["packed"], runs["unpacked"]
    assert m_packed["target_tokens"] == m_unpacked["target_tokens"] > 0
    assert abs(m_packed["loss"] - m_unpacked["loss"]) <= 1e-5
    for name in g_packed:
        assert torch.allclose(g_packed[name], g_unpacked[name], rtol=1e-4, atol=1e-7), name
        # relative in norm: Adam's first step is lr * g / (|g| + eps), so entries whose
        # gradient is near eps amplify fp32 summation-order noise element by element
        diff = torch.linalg.norm(p_packed[name] - p_unpacked[name]) / torch.linalg.norm(p_unpacked[name])
        assert diff <= 1e-6, (name, float(diff))


def test_metrics_follow_the_schedule_exactly(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    records = packed_records(make_samples(12), 1)
    trainer = make_trainer(model, tmp_path / "out", records, epochs=2, global_batch_size=1, lr=3e-4, min_lr=2e-5)
    metrics = list(trainer.train())
    want = Schedule(24, 3e-4, 2e-5, 0.1).curve()
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert [m["lr"] for m in metrics] == pytest.approx(want, rel=1e-12)
    assert metrics[-1]["lr"] == pytest.approx(2e-5)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_continues_exactly(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_file(tmp_path / "packed.jsonl", packed_records(make_samples(8, seed=3), 2))
    common = ["train", "--model", str(model), "--epochs", "2", "--global-batch-size", "2",
              "--dtype", "fp32", "--compress", "none", str(data)]
    full = run_dasd(common + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr.decode()
    first = run_dasd(common + ["--out", str(tmp_path / "split"), "--stop-after", "2"])
    assert first.returncode == 0, first.stderr.decode()
    assert (tmp_path / "split" / "checkpoint-2" / "optimizer.pt").is_file()
    assert not (tmp_path / "split" / "model.safetensors").exists()  # stopped early: no final model
    second = run_dasd(common + ["--out", str(tmp_path / "split"), "--resume"])
    assert second.returncode == 0, second.stderr.decode()
    steps_full = parse_records(full.stdout)
    steps_split = parse_records(first.stdout) + parse_records(second.stdout)
    assert [m["step"] for m in steps_split] == [1, 2, 3, 4]
    assert [m["loss"] for m in steps_split] == [m["loss"] for m in steps_full]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_different_data(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    records = packed_records(make_samples(8), 2)
    data = write_file(tmp_path / "packed.jsonl", records)
    args = ["train", "--model", str(model), "--epochs", "2", "--global-batch-size", "2", "--dtype", "fp32",
            "--out", str(tmp_path / "out"), "--compress", "none"]
    assert run_dasd(args + ["--stop-after", "1", str(data)]).returncode == 0
    fewer = write_file(tmp_path / "fewer.jsonl", records[:3])
    result = run_dasd(args + ["--resume", str(fewer)])
    assert result.returncode == 2
    assert "differs from the checkpoint" in result.stderr.decode()


def test_checkpoint_state_records_data_position(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    trainer = make_trainer(model, tmp_path / "out", packed_records(make_samples(6), 1), epochs=1,
                       global_batch_size=2, save_every=1)
    list(trainer.train())
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["total_steps"] == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not list((tmp_path / "out").glob(".*partial"))


@pytest.mark.parametrize("clip", [1.0, 1e-3, 1e6])
def test_clipping_inside_fused_adamw_equals_clip_grad_norm(tmp_path, clip):
    """The clip folded into the fused AdamW step gives clip_grad_norm_ + step's weights."""
    model = make_tiny_model(tmp_path / "model")
    records = packed_records(make_samples(4), 2)
    trainer = make_trainer(model, tmp_path / "out", records, epochs=1, global_batch_size=2, grad_clip=clip)
    reference = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for p in trainer.model.parameters():
        p.grad = torch.randn_like(p) * 0.1
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    assert trainer.optimizer.defaults["fused"] is True
    lr = trainer.optimizer.param_groups[0]["lr"]
    norm = trainer._optimizer_step()
    got = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    params = [torch.nn.Parameter(reference[n].clone()) for n, _ in trainer.model.named_parameters()]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95), eps=1e-8)
    want_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    assert norm == pytest.approx(float(want_norm), rel=1e-6)
    for (name, mine), p in zip(trainer.model.named_parameters(), params):
        torch.testing.assert_close(got[name], p.detach(), rtol=1e-6, atol=1e-8, msg=name)
        # Adam's first step hardly depends on the gradients' scale; its moments do
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(trainer.optimizer.state[mine][key], optimizer.state[p][key],
                                       rtol=1e-5, atol=1e-12, msg=f"{name} {key}")
