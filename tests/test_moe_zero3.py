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
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, parse_records, run_dasd, write_file
from moe_models import route_by_token, save_with_tokenizer, tiny_model
from test_moe import _records
from dasd_cli.model import moe

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="deepspeed not installed (DS_BUILD_OPS=0 pip install deepspeed)")]

HERE = Path(__file__).resolve().parent
GROUPS = {0: (0, 1), 1: (2, 3), 2: (4, 5), 3: (6, 7)}  # token % 4 -> the experts it picks
RANK_TOKENS = ((0,), (2, 3))  # rank 0's records use experts 0-1; rank 1's, experts 4-7
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def _zero3_config(folder: Path) -> Path:
    """configs/zero3.json, with every parameter partitioned (the shipped threshold keeps
    parameters under 1M elements whole on every rank, which is all of a tiny model)."""
    config = json.loads((ROOT / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3-all-partitioned.json"
    path.write_text(json.dumps(config))
    return path


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    model = tiny_model("qwen3_moe")
    route_by_token(model, GROUPS)
    folder = save_with_tokenizer(model, tmp_path / "model")
    records = _records(4, seed=5, token_groups=RANK_TOKENS)
    data = write_file(tmp_path / "packed.jsonl", records)
    _check_ranks_route_apart(model, records)
    return folder, data


def _check_ranks_route_apart(model, records) -> None:
    """With --no-shuffle and 2 sequences a step, rank r trains records r, r + 2, ...: the
    experts their tokens pick (every layer, initial weights) must not overlap."""
    blocks = moe.find_blocks(model)
    used = {0: set(), 1: set()}
    for i, record in enumerate(records):
        with torch.no_grad(), moe.router_logits(model, blocks) as logits:
            model(input_ids=torch.tensor(record["input_ids"])[None])
        for layer in logits:
            used[i % 2] |= set(layer.topk(2, dim=-1).indices.flatten().tolist())
    assert used[0] == {0, 1} and used[1] == {4, 5, 6, 7}, used


def _launch(args: list[str], port: int, timeout: float, env: dict[str, str] = ENV,
            deepspeed: bool = False) -> subprocess.CompletedProcess | None:
    """torchrun with 2 ranks, or the deepspeed launcher on 2 GPUs (LOCAL_RANK from the
    environment, ``-m`` as its ``--module``); None when it runs past ``timeout`` (then its
    group is killed)."""
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


def _train_args(model: Path, data: Path) -> list[str]:
    return ["train", "--model", str(model), "--epochs", "1", "--global-batch-size", "2", "--no-shuffle",
            "--dtype", "fp32", "--compress", "none", "--router-aux-loss-coef", "0.5", "--data", str(data)]


def _compare(want: list[dict], got: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["aux_loss"] == pytest.approx(a["aux_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_fused_experts_zero3_two_ranks_match_one_process(tmp_path):
    """Qwen3-MoE's fused experts need no leaf module: the run finishes and matches."""
    model, data = _setup(tmp_path)
    args = _train_args(model, data)
    single = run_dasd(args + ["--out", str(tmp_path / "single")], timeout=300)
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    launched = _launch(["-m", "dasd_cli.cli", *args, "--out", str(tmp_path / "zero3"), "--debug",
                        "--deepspeed", str(_zero3_config(tmp_path))], port=29581, timeout=600)
    assert launched is not None, "ZeRO-3 on fused experts hung"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    assert "no ZeRO-3 leaf module for Qwen3MoeSparseMoeBlock" in launched.stderr.decode()
    _compare(parse_records(single.stdout), parse_records(launched.stdout))


def _metrics(stdout: bytes) -> list[dict]:
    return [json.loads(line[len("METRICS "):]) for line in stdout.decode().splitlines()
            if line.startswith("METRICS ")]


def _script(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [str(HERE / "moe_zero3_run.py"), str(model), str(data), str(out), "--per-expert", *extra]


def test_per_expert_modules_zero3_two_ranks_match_one_process_and_hang_without_leaves(tmp_path):
    model, data = _setup(tmp_path)
    single = subprocess.run([sys.executable, *_script(model, data, tmp_path / "single")],
                            capture_output=True, env=ENV, timeout=300)
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    want = _metrics(single.stdout)
    config = str(_zero3_config(tmp_path))
    launched = _launch(_script(model, data, tmp_path / "zero3", "--deepspeed", config), port=29582, timeout=600)
    assert launched is not None, "ZeRO-3 on per-expert modules hung with leaf modules set"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    assert "ZeRO-3 leaf module: PerExpertMoe (2 blocks" in launched.stderr.decode()
    _compare(want, _metrics(launched.stdout))
    # Negative control: without leaf modules each rank gathers only the experts it routes
    # to, so the ranks' collectives stop matching. NCCL waits forever (the hang the leaf
    # modules prevent); gloo compares sizes and aborts. Either way the run must not finish.
    control = _launch(_script(model, data, tmp_path / "control", "--deepspeed", config, "--no-leaf-modules"),
                      port=29583, timeout=180)
    if control is not None:
        assert control.returncode != 0, "ZeRO-3 on per-expert modules finished without leaf modules"
        assert "collective mismatch" in control.stderr.decode(), control.stderr.decode()[-3000:]
