"""DeepSpeed ZeRO-3 over gloo with 2 CPU ranks matches the single-process run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import (ROOT, make_samples, make_tiny_model, on_policy, packed_records, parse_records, run_dasd,
                     write_file)
from moe_models import launch_two_ranks

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="deepspeed not installed (DS_BUILD_OPS=0 pip install deepspeed)")]


def zero3_ranks(*args: str):
    """``dasd ARGS --deepspeed configs/zero3.json`` on 2 CPU ranks under torchrun; asserts it
    finished and succeeded."""
    launched = launch_two_ranks(["-m", "dasd_cli.cli", *args, "--deepspeed", str(ROOT / "configs" / "zero3.json")],
                                timeout=900)
    assert launched is not None, "ZeRO-3 on 2 CPU ranks ran past 900 s"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    return launched


def single_and_zero3(args: list[str], tmp_path) -> tuple[list[dict], list[dict]]:
    """``dasd train ARGS`` in one process (--out tmp_path/single) and under torchrun with 2
    CPU ranks and ZeRO-3 (--out tmp_path/zero3, a free rendezvous port): both metrics lists."""
    single = run_dasd(args + ["--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr.decode()
    launched = zero3_ranks(*args, "--out", str(tmp_path / "zero3"))
    return parse_records(single.stdout), parse_records(launched.stdout)  # stdout: records only


# global batch 2: one micro-batch per rank and step; 4: two, accumulated by ZeRO-3
@pytest.mark.parametrize("global_batch", [2, 4])
def test_zero3_two_cpu_ranks_match_single_process(tmp_path, global_batch):
    model = make_tiny_model(tmp_path / "model")
    data = write_file(tmp_path / "packed.jsonl", packed_records(make_samples(20, seed=7), 2))
    args = ["train", "--model", str(model), "--epochs", "1", "--global-batch-size", str(global_batch),
            "--dtype", "fp32", "--compress", "none", "--data", str(data)]
    want, got = single_and_zero3(args, tmp_path)
    steps = -(-10 // global_batch)  # 10 packed sequences; a last partial step counts
    assert [m["step"] for m in want] == [m["step"] for m in got] == list(range(1, steps + 1))
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "zero3"))
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "single"))
    for (name, p), (_, q) in zip(reloaded.named_parameters(), reference.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    assert (tmp_path / "zero3" / f"checkpoint-{steps}" / "deepspeed").is_dir()


def test_zero3_ranks_leave_stderr_to_dasd_unless_debug(tmp_path):
    """torch.distributed's FutureWarnings (every step, every rank) and DeepSpeed's prints
    show only with --debug; rank 0 alone writes the TensorBoard scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_tiny_model(tmp_path / "model")
    data = write_file(tmp_path / "packed.jsonl", packed_records(make_samples(8, seed=7), 2))
    args = ["train", "--model", str(model), "--epochs", "2", "--global-batch-size", "2", "--dtype", "fp32",
            "--compress", "none", "--data", str(data)]
    quiet = zero3_ranks(*args, "--out", str(tmp_path / "quiet"), "--tensorboard", str(tmp_path / "tb"))
    lines = quiet.stderr.decode().splitlines()
    assert [line for line in lines if not line.startswith("dasd train: ")] == []
    assert lines[-1].startswith("dasd train: read 4, trained on 4")
    metrics = parse_records(quiet.stdout)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert len(list((tmp_path / "tb").iterdir())) == 1  # one event file: rank 0's
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics]  # float32 scalars
    # the same run with --debug: the chatter above was there to hide
    debug = zero3_ranks(*args, "--out", str(tmp_path / "debug"), "--debug")
    text = debug.stderr.decode()
    # ZeRO-3 calls the deprecated collectives every step on every rank; DeepSpeed's op-build
    # note ("built successfully") is not printed on every run, so it is no control
    assert "FutureWarning: `torch.distributed." in text, text[-3000:]


def test_zero3_two_cpu_ranks_match_single_process_on_reverse_kl(tmp_path):
    """On-policy data through ZeRO-3's checkpointed loss on 2 ranks = the fused loss in one process."""
    model = make_tiny_model(tmp_path / "model")
    samples = make_samples(8, seed=9)
    records = [on_policy(record, model, seed=i) for i, record in enumerate(packed_records(samples, 2))]
    data = write_file(tmp_path / "packed.jsonl", records)
    args = ["train", "--model", str(model), "--objective", "reverse-kl", "--epochs", "2",
            "--global-batch-size", "2", "--dtype", "fp32", "--compress", "none", "--data", str(data)]
    want, got = single_and_zero3(args, tmp_path)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        for key in ("loss", "advantage", "reverse_kl", "clip_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert want[-1]["reverse_kl"] != pytest.approx(want[0]["reverse_kl"], rel=1e-3)  # later steps off-policy
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "zero3"))
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "single"))
    for (name, p), (_, q) in zip(reloaded.named_parameters(), reference.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
