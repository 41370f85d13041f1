"""DeepSpeed ZeRO-3 over gloo with 2 CPU ranks matches the single-process run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, make_samples, make_tiny_model, packed_records, parse_records, run_dasd, write_file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="deepspeed not installed (DS_BUILD_OPS=0 pip install deepspeed)")]


def test_zero3_two_cpu_ranks_match_single_process(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_file(tmp_path / "packed.jsonl", packed_records(make_samples(20, seed=7), 2))
    args = ["train", "--model", str(model), "--epochs", "1", "--global-batch-size", "2",
            "--dtype", "fp32", "--compress", "none", "--data", str(data)]
    single = run_dasd(args + ["--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr.decode()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
         "-m", "dasd_cli.cli", *args, "--out", str(tmp_path / "zero3"),
         "--deepspeed", str(ROOT / "configs" / "zero3.json")],
        capture_output=True, env=env, timeout=900)
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    want, got = parse_records(single.stdout), parse_records(launched.stdout)  # stdout: records only
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "zero3"))
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path / "single"))
    for (name, p), (_, q) in zip(reloaded.named_parameters(), reference.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    assert (tmp_path / "zero3" / "checkpoint-5" / "deepspeed").is_dir()
