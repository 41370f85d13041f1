"""The openai backend against a fake OpenAI server on loopback, directly and through a
fault-injecting proxy (500s, 429 + Retry-After, dropped connections, slow replies); and
`dasd sample --resume` killed at random moments. Fast: no model is loaded."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import dasd_bin, parse_records, run_dasd, to_jsonl
from dasd_cli.model.tokens import byte_offsets
from dasd_cli.backends.openai import backoff_delay, map_offsets, parse_retry_after
from fault_proxy import FakeOpenAI, FaultProxy, random_plan

PROMPTS = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "domain": "math"} for i in range(12)]


def sample(url: str, *extra: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    return run_dasd(["sample", "--backend", "openai", "--base-url", url, "--compress", "none", *extra, "-"],
                    stdin=to_jsonl(PROMPTS) if stdin is None else stdin, env=env, timeout=timeout)


def check_contract(record: dict[str, Any]) -> None:
    sampler = record["sampler"]
    offsets = sampler["offsets"]
    assert len(offsets) == len(sampler["logprobs"]) > 0
    assert all(a <= b for a, b in zip(offsets, offsets[1:]))
    assert 0 <= offsets[0] and offsets[-1] < len(record["response"])


# --------------------------------------------------------------------------- units


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 1.0 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT",  # type: ignore[operator]
                                                 time.gmtime(time.time() + 5)))
    assert backoff_delay(3, 0.5, retry_after=7.0) == 7.0
    delays = [backoff_delay(k, 0.5) for k in range(1, 12)]
    assert 0.25 <= delays[0] <= 0.5 and all(d <= 30.0 for d in delays)
    assert 15.0 <= delays[-1]  # exponential up to the cap, with jitter in the upper half


def test_offsets_from_bytes_and_mapping() -> None:
    text, offsets = byte_offsets([b"a", "\u00e9".encode()[:1], "\u00e9".encode()[1:] + b"b", b" c"])
    assert text == "a\u00e9b c" and offsets == [0, 1, 1, 3]
    raw = "<think>\nabc\n</think>\n\nX"
    assert map_offsets(raw, raw, [0, 7, 8]) == [0, 7, 8]
    assert map_offsets("abc", "<think>\nabc", [0, 2]) == [8, 10]  # the tag came with the prompt
    mapped = map_offsets("\n\nabc", "abc", [0, 1, 2, 3])  # leading newlines stripped by a parser
    assert mapped == [0, 0, 0, 1]


# --------------------------------------------------------------------------- fake server


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_records_and_api_key(tmp_path: Path, endpoint: str) -> None:
    stats = tmp_path / "stats.json"
    with FakeOpenAI() as server:
        proc = sample(server.url, "--endpoint", endpoint, "-n", "2", "-t", "0.6", "-t", "1.0",
                      "--max-tokens", "8", "--api-key-env", "DASD_TEST_KEY", "--stats", str(stats),
                      env={"DASD_TEST_KEY": "sk-very-secret"})
        assert proc.returncode == 0, proc.stderr.decode()
        assert server.authorization == {"Bearer sk-very-secret"}
        sent = {p["seed"]: p for p in server.payloads}
    records = parse_records(proc.stdout)
    assert [r["id"] for r in records] == [f"q{i}@{t}#{k}" for i in range(12) for t in ("0.6", "1")
                                          for k in range(2)]
    for record in records:
        check_contract(record)
        assert record["sampler"]["model"] == "fake-teacher" and record["domain"] == "math"
        assert record["finish_reason"] in ("stop", "length")
        assert len(record["sampler"]["logprobs"]) <= 8
        # one entry per response token: the fake's words, without its end-of-turn entry
        payload = sent[record["sampler"]["seed"]]
        key = json.dumps(payload["messages"]) if endpoint == "chat" else payload["prompt"]
        pieces = FakeOpenAI.write(key, payload)[0]
        assert record["response"] == "".join(pieces) and len(record["sampler"]["logprobs"]) == len(pieces)
    assert any(r["finish_reason"] == "length" for r in records)
    for blob in (proc.stdout, proc.stderr, stats.read_bytes()):
        assert b"sk-very-secret" not in blob


def test_logprobs_mode_is_unknown_unless_the_server_is_declared() -> None:
    """A reply does not say which distribution its log-probs are from: records say
    "unknown", which dasd score refuses; --server-logprobs raw records the operator's word."""
    with FakeOpenAI() as server:
        unknown = sample(server.url, "--max-tokens", "4", stdin=to_jsonl(PROMPTS[:2]))
        declared = sample(server.url, "--max-tokens", "4", "--server-logprobs", "raw",
                          stdin=to_jsonl(PROMPTS[:2]))
        processed = sample(server.url, "--max-tokens", "4", "--server-logprobs", "processed",
                           stdin=to_jsonl(PROMPTS[:2]))
    for proc, mode in ((unknown, "unknown"), (declared, "raw"), (processed, "processed")):
        assert proc.returncode == 0, proc.stderr.decode()
        assert {r["sampler"]["logprobs_mode"] for r in parse_records(proc.stdout)} == {mode}
    scored = run_dasd(["score", "-"], stdin=unknown.stdout)
    assert scored.returncode == 1 and b"logprobs_mode is unknown" in scored.stderr
    assert b"<stdin>:1" in scored.stderr and b"--server-logprobs raw" in scored.stderr
    wrong = run_dasd(["sample", "--server-logprobs", "raw", "-"], stdin=to_jsonl(PROMPTS[:1]))
    assert wrong.returncode == 2 and b"--server-logprobs is for --backend openai" in wrong.stderr


def test_reasoning_content_joined_with_aligned_offsets() -> None:
    with FakeOpenAI(reasoning=True) as server:
        proc = sample(server.url, "--max-tokens", "12")
        assert proc.returncode == 0, proc.stderr.decode()
        replies = {p["seed"]: p for p in server.payloads}
    for record in parse_records(proc.stdout):
        response = record["response"]
        assert response.startswith("<think>\n") and "\n</think>\n\nFinal:" in response
        check_contract(record)
        # every word token's offset points at that word in the joined text
        payload = replies[record["sampler"]["seed"]]
        pieces, _logprobs, _finish = FakeOpenAI.write(json.dumps(payload["messages"]), payload)
        offsets = record["sampler"]["offsets"][2:2 + len(pieces)]  # after "<think>", "\n"
        for piece, at in zip(pieces, offsets):
            if piece != "\n":
                assert response.startswith(piece, at), (piece, at, response)


def test_usage_errors() -> None:
    proc = run_dasd(["sample", "--backend", "openai", "-"], stdin=b"")
    assert proc.returncode == 2 and b"--base-url" in proc.stderr
    proc = run_dasd(["sample", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                     "--max-retries", "1", "-"], stdin=to_jsonl(PROMPTS[:1]))
    assert proc.returncode == 1 and b"failed after 1 retries" in proc.stderr
    assert b"Traceback" not in proc.stderr


# --------------------------------------------------------------------------- faults


def test_every_record_exactly_once_through_faults() -> None:
    plan = random_plan(7, {"500": 0.15, "429": 0.1, "drop": 0.1, "slow": 0.1})
    with FakeOpenAI() as server, FaultProxy(server.port, plan, retry_after=0.2, slow_seconds=1.5) as proxy:
        proc = sample(proxy.url, "-n", "2", "--concurrency", "4", "--timeout", "1", "--max-retries", "12")
        assert proc.returncode == 0, proc.stderr.decode()
    records = parse_records(proc.stdout)
    ids = [r["id"] for r in records]
    assert ids == [f"q{i}@0.6#{k}" for i in range(12) for k in range(2)]  # once each, in order
    for record in records:
        check_contract(record)
    assert {f for f in proxy.faults if f} == {"500", "429", "drop", "slow"}
    # a retried sample is the same sample: its seed is sent again, unchanged
    assert set(server.requests) == {r["sampler"]["seed"] for r in records}


def test_retry_after_is_honoured() -> None:
    with FakeOpenAI() as server, \
            FaultProxy(server.port, lambda n: "429" if n == 0 else None, retry_after=1.5) as proxy:
        proc = sample(proxy.url, "--concurrency", "1", stdin=to_jsonl(PROMPTS[:1]))
        assert proc.returncode == 0, proc.stderr.decode()
    (t0, first), (t1, second) = proxy.times[:2]
    assert first == "429" and second is None and t1 - t0 >= 1.5


def test_retry_budget_fails_clearly_and_keeps_completed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with FakeOpenAI() as server, FaultProxy(server.port, lambda n: "500" if n >= 3 else None) as proxy:
        proc = sample(proxy.url, "--concurrency", "1", "--max-retries", "2", "-o", str(out), "--resume")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "failed after 2 retries: HTTP 500" in err and "hint:" in err and "Traceback" not in err
    kept = parse_records(out.read_bytes())
    assert [r["id"] for r in kept] == ["q0@0.6#0", "q1@0.6#0", "q2@0.6#0"]
    with FakeOpenAI() as server:  # the server is back: resume produces exactly the missing ones
        proc = sample(server.url, "-o", str(out), "--resume")
        assert proc.returncode == 0, proc.stderr.decode()
        assert sum(server.requests.values()) == len(PROMPTS) - 3
    assert sorted(r["id"] for r in parse_records(out.read_bytes())) == sorted(f"q{i}@0.6#0" for i in range(12))
    assert "resumed 3" in proc.stderr.decode()
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left beside it


def test_resume_after_kills_at_random_moments(tmp_path: Path) -> None:
    """SIGKILL at 5 random moments, then --resume: exactly the expected ids, once each."""
    prompts = [{"id": f"k{i}", "prompt": f"Count to {i}."} for i in range(40)]
    inputs = tmp_path / "prompts.jsonl"
    inputs.write_bytes(to_jsonl(prompts))
    out = tmp_path / "out.jsonl"
    expected = sorted(f"k{i}@0.6#{k}" for i in range(40) for k in range(2))
    rng = random.Random(11)
    with FakeOpenAI(delay=0.03) as server:
        args = dasd_bin() + ["sample", "--backend", "openai", "--base-url", server.url, "-n", "2",
                             "--concurrency", "2", "-o", str(out), "--resume", str(inputs)]
        counts = []
        for _ in range(5):
            before = len(out.read_bytes().splitlines()) if out.exists() else 0
            target = before + rng.randint(1, 12)  # kill mid-run: after a random number of records
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and (
                    not out.exists() or len(out.read_bytes().splitlines()) < target):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            counts.append(len(out.read_bytes().splitlines()) if out.exists() else 0)
        final = subprocess.run(args, capture_output=True, timeout=120)
        assert final.returncode == 0, final.stderr.decode()
    ids = [r["id"] for r in parse_records(out.read_bytes())]
    assert len(ids) == len(set(ids)) and sorted(ids) == expected
    print(f"lines present after each kill: {counts}")
