"""Unit tests of the pure training pieces: masks, chunked loss, schedule, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dasd_cli.core.train import batching, loss, masks
from dasd_cli.core.train.schedule import Schedule
from dasd_cli.errors import RecordError


# --------------------------------------------------------------------------- masks

def test_segment_ids_restart_at_zero():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    assert masks.segment_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3, 3, 3]]


def test_block_causal_mask_bool_matches_brute_force():
    pos = [0, 1, 2, 0, 1, 0, 1, 2, 3]
    seg = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    mask = masks.block_causal_mask(torch.tensor([pos]))
    assert mask.shape == (1, 1, 9, 9) and mask.dtype == torch.bool
    for i in range(9):
        for j in range(9):
            assert bool(mask[0, 0, i, j]) == (j <= i and seg[i] == seg[j]), (i, j)


def test_block_causal_mask_float_is_additive():
    pos = torch.tensor([[0, 1, 0, 1]])
    mask = masks.block_causal_mask(pos, dtype=torch.float32)
    allowed = masks.block_causal_mask(pos)
    assert torch.all(mask[allowed] == 0)
    assert torch.all(mask[~allowed] == torch.finfo(torch.float32).min)


def test_cu_seqlens():
    cu, longest = masks.cu_seqlens(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    assert cu.tolist() == [0, 3, 5, 6] and longest == 3 and cu.dtype == torch.int32


def test_shifted_targets_never_cross_a_boundary():
    labels = torch.tensor([[-100, 11, 12, -100, 21, 22]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    # position 2 (last of sample 1) must not predict position 3 (first of sample 2)
    assert masks.shifted_targets(labels, pos).tolist() == [[11, 12, -100, 21, 22, -100]]
    labels2 = torch.tensor([[5, 6, 7, 8]])  # even a trained first token is not a target
    assert masks.shifted_targets(labels2, torch.tensor([[0, 1, 0, 1]])).tolist() == [[6, -100, 8, -100]]


# --------------------------------------------------------------------------- loss

def _reference(hidden, weight, targets, bias=None):
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    if bias is not None:
        logits = logits + bias
    return torch.nn.functional.cross_entropy(logits, targets.reshape(-1), reduction="sum",
                                             ignore_index=-100)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_cross_entropy_matches_full_logits(chunk_size, with_bias):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (2, 9), generator=gen)
    targets[0, :4] = -100
    got, count = loss.fused_linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size)
    assert count == 14
    (got * 0.5).backward()
    grads = [hidden.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if with_bias else [])
    for t in [hidden, weight] + ([bias] if with_bias else []):
        t.grad = None
    want = _reference(hidden, weight, targets, bias)
    (want * 0.5).backward()
    assert torch.allclose(got.double(), want, rtol=1e-6)
    refs = [hidden.grad, weight.grad] + ([bias.grad] if with_bias else [])
    for g, r in zip(grads, refs):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)
    assert torch.all(grads[0][0, :4] == 0)  # ignored rows get no gradient


def test_checkpointed_cross_entropy_matches_full_logits():
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 30, bias=False).double()
    hidden = torch.randn(1, 11, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (1, 11), generator=gen)
    targets[0, ::3] = -100
    got, count = loss.checkpointed_cross_entropy(hidden, head, targets, chunk_size=2)
    got.backward()
    g_hidden, g_weight = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    want = _reference(hidden, head.weight, targets)
    want.backward()
    assert count == 7
    assert torch.allclose(got.double(), want)
    assert torch.allclose(g_hidden, hidden.grad) and torch.allclose(g_weight, head.weight.grad)


def test_loss_with_no_targets_is_zero_and_backpropagates():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    got, count = loss.fused_linear_cross_entropy(hidden, weight, torch.full((1, 4), -100))
    got.backward()
    assert count == 0 and float(got.detach()) == 0.0 and hidden.grad is not None


# --------------------------------------------------------------------------- schedule

def test_schedule_matches_formula_at_every_step():
    sched = Schedule(total_steps=50, peak_lr=5e-5, min_lr=1e-5, warmup_ratio=0.1)
    assert sched.warmup_steps == 5
    curve = sched.curve()
    for step, lr in enumerate(curve, start=1):
        if step <= 5:
            want = 5e-5 * step / 5
        else:
            want = 1e-5 + 4e-5 * 0.5 * (1 + math.cos(math.pi * (step - 5) / 45))
        assert lr == pytest.approx(want, rel=1e-12, abs=0)
    assert curve[4] == pytest.approx(5e-5)  # warmup ends at the peak
    assert curve[-1] == pytest.approx(1e-5)  # the run ends at the floor
    assert all(a >= b for a, b in zip(curve[5:], curve[6:]))  # monotone decay


def test_schedule_rejects_bad_steps():
    sched = Schedule(total_steps=3)
    with pytest.raises(ValueError, match=r"step 0 outside 1\.\.3"):
        sched.lr(0)
    with pytest.raises(ValueError, match=r"step 4 outside 1\.\.3"):
        sched.lr(4)
    with pytest.raises(ValueError, match="total_steps must be at least 1"):
        Schedule(total_steps=0)


# --------------------------------------------------------------------------- batching

def _record(n=5):
    return {"input_ids": list(range(n)), "labels": [-100] * 2 + list(range(2, n)),
            "position_ids": [0, 1, 2, 0, 1][:n], "ids": ["a", "b"]}


def test_packed_from_record_and_target_count():
    seq = batching.packed_from_record(_record(), vocab_size=10)
    assert len(seq) == 5 and seq.ids == ["a", "b"] and seq.input_ids.dtype == np.int32
    # targets: pos0->1 (-100), pos1->2 (2), pos2->3 crosses boundary, pos3->4 (4)
    assert seq.target_count == 2


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.pop("labels"), "missing_field"),
    (lambda r: r.update(labels=[1, 2]), "bad_field"),
    (lambda r: r.update(input_ids=[0, 1, 2, 3, 99]), "bad_token"),
    (lambda r: r.update(input_ids=[], labels=[], position_ids=[]), "empty"),
    (lambda r: r.update(position_ids=["x"] * 5), "bad_field"),
])
def test_packed_from_record_names_the_problem(mutate, reason):
    record = _record()
    mutate(record)
    with pytest.raises(RecordError) as info:
        batching.packed_from_record(record, vocab_size=10)
    assert info.value.reason == reason


def test_step_plan_counts_and_covers_each_epoch_once():
    plan = batching.StepPlan(num_sequences=10, global_batch_size=4)
    assert plan.steps_per_epoch == 3 and plan.total_steps(2) == 6
    steps = list(plan.iter_steps(epochs=2, seed=42))
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5, 6]
    for epoch in (0, 1):
        seen = [b.index for s in steps if s[1] == epoch for b in s[3]]
        assert sorted(seen) == list(range(10))
    assert [s[2] for s in steps[:3]] != [s[2] for s in steps[3:]]  # reshuffled per epoch


def test_step_plan_resume_yields_the_same_tail():
    plan = batching.StepPlan(num_sequences=7, global_batch_size=2)
    full = list(plan.iter_steps(epochs=3, seed=1))
    for done in range(len(full)):
        assert list(plan.iter_steps(epochs=3, seed=1, start_step=done)) == full[done:]


def test_step_plan_ranks_split_and_pad_with_fillers():
    plans = [batching.StepPlan(num_sequences=5, global_batch_size=4, world_size=2, rank=r) for r in (0, 1)]
    last = [list(p.iter_steps(1, seed=0, shuffle=False))[-1] for p in plans]
    # the last step holds one sequence: rank 0 trains on it, rank 1 runs a weight-0 filler
    assert last[0][3] == [batching.MicroBatch(4, 1.0)]
    assert last[1][3] == [batching.MicroBatch(4, 0.0)]
    first = [list(p.iter_steps(1, seed=0, shuffle=False))[0][3] for p in plans]
    assert [b.index for b in first[0]] == [0, 2] and [b.index for b in first[1]] == [1, 3]


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path) -> None:
    from dasd_cli.training import checkpoint as ckpt

    for step in (2, 4, 10):
        folder = ckpt.checkpoint_dir(tmp_path, step)
        folder.mkdir()
        (folder / ckpt.STATE_FILE).write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # incomplete (no state file): never counted or removed
    assert ckpt.prune(tmp_path, 0) == []
    removed = ckpt.prune(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-12", "checkpoint-4"]
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-10"
