"""`dasd train --objective reverse-kl` on a tiny random Llama: the policy gradient, packing,
resume and refusals (the ZeRO-3 parity is in test_train_deepspeed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (make_samples, make_tiny_model, make_trainer, on_policy, pack, parse_records, run_dasd,
                     write_file)

from dasd_cli.training import recipe


def _trainer(model: Path, out: Path, records: list[dict], **kwargs) -> recipe.Trainer:
    return make_trainer(model, out, records, objective="reverse-kl", **kwargs)


def _capture_grads(trainer: recipe.Trainer) -> dict[str, torch.Tensor]:
    grads: dict[str, torch.Tensor] = {}
    step_optimizer = trainer._optimizer_step

    def capture() -> float:
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()})
        return step_optimizer()

    trainer._optimizer_step = capture
    return grads


def test_one_step_gradient_is_the_per_token_policy_gradient(tmp_path):
    """At theta = sampler, the step's gradient is that of -(1/N) sum_t A_t log pi_theta(y_t),
    computed here by autograd on the plain model forward, sample by sample."""
    model = make_tiny_model(tmp_path / "model")
    samples = make_samples(4, seed=1)
    records = [on_policy(pack(samples[i:i + 2]), model, seed=i) for i in (0, 2)]
    trainer = _trainer(model, tmp_path / "out", records, epochs=1, global_batch_size=2, shuffle=False,
                       grad_clip=0.0)
    grads = _capture_grads(trainer)
    metrics = list(trainer.train())[0]

    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    total, advantage_sum = 0, 0.0
    objective = 0.0
    for record in records:
        starts = [i for i, p in enumerate(record["position_ids"]) if p == 0] + [len(record["input_ids"])]
        for a, b in zip(starts[:-1], starts[1:]):
            tokens = torch.tensor([record["input_ids"][a:b]])
            logp = torch.log_softmax(reference(input_ids=tokens).logits[0, :-1].float(), dim=-1)
            picked = logp.gather(1, tokens[0, 1:, None]).squeeze(1)
            labels = torch.tensor(record["labels"][a + 1:b])
            advantage = (torch.tensor(record["teacher_logprobs"][a + 1:b])
                         - torch.tensor(record["sampler_logprobs"][a + 1:b]))
            mask = labels != -100
            objective = objective - (advantage[mask] * picked[mask]).sum()
            total += int(mask.sum())
            advantage_sum += float(advantage[mask].sum())
    (objective / total).backward()
    assert metrics["target_tokens"] == total
    assert metrics["advantage"] == pytest.approx(advantage_sum / total, rel=1e-6)
    assert metrics["reverse_kl"] == pytest.approx(-advantage_sum / total, rel=1e-4, abs=1e-6)
    assert metrics["clip_fraction"] == 0.0
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_zero_advantages_leave_the_weights_unchanged(tmp_path):
    """Teacher = sampler: every advantage is 0, so no gradient (weight decay off: AdamW's
    decay alone moves weights without any gradient)."""
    model = make_tiny_model(tmp_path / "model")
    records = [on_policy(pack(make_samples(3, seed=2)), model, teacher_shift=0.0)]
    trainer = _trainer(model, tmp_path / "out", records, epochs=2, global_batch_size=1, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = list(trainer.train())
    assert [m["advantage"] for m in metrics] == [0.0, 0.0] and metrics[0]["grad_norm"] == 0.0
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name


def test_one_step_packed_equals_unpacked(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    samples = make_samples(5, seed=4)
    packed = [on_policy(pack(samples), model)]
    unpacked = [on_policy(pack([s]), model, seed=0) for s in samples]
    # the same teacher numbers per sample in both layouts
    flat_teacher = [x for r in unpacked for x in r["teacher_logprobs"]]
    packed[0]["teacher_logprobs"] = flat_teacher
    runs = {}
    for name, records in (("packed", packed), ("unpacked", unpacked)):
        trainer = _trainer(model, tmp_path / name, records, epochs=2, global_batch_size=len(records),
                           shuffle=False)
        grads = _capture_grads(trainer)
        metrics = list(trainer.train())
        runs[name] = (metrics, grads, {n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    (m_p, g_p, w_p), (m_u, g_u, w_u) = runs["packed"], runs["unpacked"]
    for a, b in zip(m_p, m_u):  # the second step is off-policy: ratios != 1
        assert a["target_tokens"] == b["target_tokens"] > 0
        for key in ("loss", "advantage", "reverse_kl", "clip_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert m_p[1]["reverse_kl"] != pytest.approx(m_p[0]["reverse_kl"], rel=1e-3)  # the weights moved
    for name in g_p:
        assert torch.allclose(g_p[name], g_u[name], rtol=1e-4, atol=1e-7), name
        diff = torch.linalg.norm(w_p[name] - w_u[name]) / torch.linalg.norm(w_u[name])
        assert diff <= 1e-6, (name, float(diff))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    samples = make_samples(8, seed=5)
    records = [on_policy(pack(samples[i:i + 2]), model, seed=i) for i in range(0, 8, 2)]
    data = write_file(tmp_path / "packed.jsonl", records)
    common = ["train", "--model", str(model), "--objective", "reverse-kl", "--clip-low", "0.1",
              "--clip-high", "0.28", "--epochs", "2", "--global-batch-size", "2", "--dtype", "fp32",
              "--compress", "none", str(data)]
    full = run_dasd(common + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr.decode()
    first = run_dasd(common + ["--out", str(tmp_path / "split"), "--stop-after", "3"])
    assert first.returncode == 0, first.stderr.decode()
    second = run_dasd(common + ["--out", str(tmp_path / "split"), "--resume"])
    assert second.returncode == 0, second.stderr.decode()
    steps_full = parse_records(full.stdout)
    steps_split = parse_records(first.stdout) + parse_records(second.stdout)
    assert [m["step"] for m in steps_split] == [1, 2, 3, 4]
    for key in ("loss", "advantage", "reverse_kl", "clip_fraction"):
        assert [m[key] for m in steps_split] == [m[key] for m in steps_full], key
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # a resume with other clip bounds would not continue the same run
    other = run_dasd(common[:6] + ["0.2"] + common[7:] + ["--out", str(tmp_path / "split"), "--resume"])
    assert other.returncode == 2 and "clip" in other.stderr.decode()


def test_reverse_kl_refuses_sft_data_and_sft_warns_on_on_policy_data(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    sft = write_file(tmp_path / "sft.jsonl", [pack(make_samples(2))])
    args = ["train", "--model", str(model), "--epochs", "1", "--global-batch-size", "1", "--dtype", "fp32",
            "--compress", "none"]
    refused = run_dasd(args + ["--objective", "reverse-kl", "--out", str(tmp_path / "a"), str(sft)])
    assert refused.returncode == 1 and "needs on-policy data" in refused.stderr.decode()
    onp = write_file(tmp_path / "onp.jsonl", [on_policy(pack(make_samples(2)), model)])
    warned = run_dasd(args + ["--out", str(tmp_path / "b"), str(onp)])
    assert warned.returncode == 0 and "--objective sft ignores them" in warned.stderr.decode()


def test_bad_streams_and_mixed_data_are_bad_records(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    good = on_policy(pack(make_samples(2, seed=6)), model)
    half = {k: v for k, v in good.items() if k != "teacher_logprobs"}
    short = {**good, "teacher_logprobs": good["teacher_logprobs"][:-1]}
    sft = pack(make_samples(2, seed=7))
    data = write_file(tmp_path / "bad.jsonl", [good, half, short, sft])
    result = run_dasd(["train", "--model", str(model), "--objective", "reverse-kl", "--epochs", "1",
                       "--global-batch-size", "1", "--dtype", "fp32", "--compress", "none", "--on-error", "skip",
                       "--out", str(tmp_path / "out"), str(data)])
    assert result.returncode == 0, result.stderr.decode()
    summary = result.stderr.decode()
    assert "skipped 3" in summary and "mixed_objectives 1" in summary and "missing_field 1" in summary
