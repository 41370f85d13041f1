"""MoE students under DeepSpeed ZeRO-3 on 2 gloo CPU ranks whose tokens route to
different experts: fused experts (Qwen3-MoE as transformers ships it) and one module per
expert (with and without the leaf modules dasd registers). Every launch is bounded by a
timeout and its process group is killed when it runs past it.

Without leaf modules the per-expert layout breaks the collectives: on gloo, rank 0 aborts
with "Received data size doesn't match expected size. Is there a distributed collective
mismatch" (one rank all-gathers an expert the other never calls); NCCL has no such check
and hangs, the failure reported for Qwen3-30B-A3B under ZeRO-3."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from helpers import parse_records, run_dasd
from moe_models import (compare_steps, launch_two_ranks, metrics_lines, rank_script, zero3_config,
                        zero3_env, zero3_setup, zero3_train_args)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="deepspeed not installed (DS_BUILD_OPS=0 pip install deepspeed)")]

def test_fused_experts_zero3_two_ranks_match_one_process(tmp_path):
    """Qwen3-MoE's fused experts need no leaf module: the run finishes and matches."""
    model, data = zero3_setup(tmp_path)
    args = zero3_train_args(model, data)
    single = run_dasd(args + ["--out", str(tmp_path / "single")], timeout=300)
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    launched = launch_two_ranks(["-m", "dasd_cli.cli", *args, "--out", str(tmp_path / "zero3"), "--debug",
                        "--deepspeed", str(zero3_config(tmp_path))], timeout=600)
    assert launched is not None, "ZeRO-3 on fused experts hung"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    assert "no ZeRO-3 leaf module for Qwen3MoeSparseMoeBlock" in launched.stderr.decode()
    compare_steps(parse_records(single.stdout), parse_records(launched.stdout))


def test_per_expert_modules_zero3_two_ranks_match_one_process_and_hang_without_leaves(tmp_path):
    model, data = zero3_setup(tmp_path)
    single = subprocess.run([sys.executable, *rank_script(model, data, tmp_path / "single")],
                            capture_output=True, env=zero3_env(), timeout=300)
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    want = metrics_lines(single.stdout)
    config = str(zero3_config(tmp_path))
    launched = launch_two_ranks(rank_script(model, data, tmp_path / "zero3", "--deepspeed", config),
                                timeout=600)
    assert launched is not None, "ZeRO-3 on per-expert modules hung with leaf modules set"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    assert "ZeRO-3 leaf module: PerExpertMoe (2 blocks" in launched.stderr.decode()
    compare_steps(want, metrics_lines(launched.stdout))
    # Negative control: without leaf modules each rank gathers only the experts it routes
    # to, so the ranks' collectives stop matching. NCCL waits forever (the hang the leaf
    # modules prevent); gloo compares sizes and aborts. Either way the run must not finish.
    control = launch_two_ranks(rank_script(model, data, tmp_path / "control", "--deepspeed", config,
                                           "--no-leaf-modules"), timeout=180)
    if control is not None:
        assert control.returncode != 0, "ZeRO-3 on per-expert modules finished without leaf modules"
        assert "collective mismatch" in control.stderr.decode(), control.stderr.decode()[-3000:]
