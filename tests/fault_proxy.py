"""Loopback HTTP helpers for the openai backend tests.

- :class:`FakeOpenAI`: a tiny OpenAI-compatible server (chat, completions, models). Its
  "model" writes deterministic words chosen from (prompt, seed) with made-up log-probs,
  honours max_tokens (finish_reason "length"), can answer in reasoning-parser form
  (``reasoning_content`` apart from ``content``), and counts requests per sample seed.
- :class:`FaultProxy`: forwards to an upstream and injects faults from a plan: HTTP 500,
  429 with Retry-After, dropped connections and slow replies.

Both run on 127.0.0.1 in a daemon thread; use them as context managers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["The", " answer", " is", " four", ".", " We", " add", " two", " and", " two", "\n",
         " café", " 😀", " 中文", " so", " done", "!"]


class _Server:
    handler: type[BaseHTTPRequestHandler]

    def __enter__(self) -> _Server:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "fake-teacher"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        owner: FakeOpenAI = self.server.owner  # type: ignore[attr-defined]
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        owner.record(payload, self.headers.get("Authorization"))
        if owner.delay:
            time.sleep(owner.delay)
        if self.path.endswith("/chat/completions"):
            key = json.dumps(payload["messages"])
        elif self.path.endswith("/completions"):
            key = payload["prompt"]
        else:
            self._send(404, {"error": "not found"})
            return
        pieces, logprobs, finish = owner.write(key, payload)
        text = "".join(pieces)
        if self.path.endswith("/chat/completions"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if owner.reasoning:
                answer = "Final: " + (text.split(".")[0] or "none")
                pieces = ["<think>", "\n"] + pieces + ["\n", "</think>", "\n\n", "Final:", " ",
                                                        answer[len("Final: "):]]
                logprobs = [-0.01, -0.02] + logprobs + [-0.03, -0.04, -0.05, -0.06, -0.07, -0.08]
                message = {"role": "assistant", "reasoning_content": text, "content": answer}
            if finish == "stop":  # vLLM lists the end-of-turn token too, with no text
                pieces, logprobs = pieces + [""], logprobs + [-0.5]
            content = [{"token": p, "logprob": lp, "bytes": list(p.encode()), "top_logprobs": []}
                       for p, lp in zip(pieces, logprobs)]
            choice = {"index": 0, "message": message, "finish_reason": finish,
                      "logprobs": {"content": content}}
        else:
            if finish == "stop":
                pieces, logprobs = pieces + ["<|im_end|>"], logprobs + [-0.5]
            choice = {"index": 0, "text": text, "finish_reason": finish,
                      "logprobs": {"tokens": pieces, "token_logprobs": logprobs}}
        self._send(200, {"id": "x", "object": "chat.completion", "model": "fake-teacher",
                         "choices": [choice]})


class FakeOpenAI(_Server):
    """A deterministic OpenAI-compatible server; ``requests`` counts calls per seed."""

    handler = _FakeHandler

    def __init__(self, reasoning: bool = False, delay: float = 0.0) -> None:
        self.reasoning = reasoning
        self.delay = delay
        self.requests: Counter = Counter()
        self.payloads: list[dict[str, Any]] = []
        self.authorization: set[str | None] = set()
        self._lock = threading.Lock()

    def record(self, payload: dict[str, Any], authorization: str | None) -> None:
        with self._lock:
            self.requests[payload.get("seed")] += 1
            self.payloads.append(payload)
            self.authorization.add(authorization)

    @staticmethod
    def write(key: str, payload: dict[str, Any]) -> tuple[list[str], list[float], str]:
        digest = hashlib.sha256(f"{key}|{payload.get('seed')}|{payload.get('temperature')}".encode()).digest()
        rng = random.Random(digest)
        length = rng.randint(3, 12)
        cap = int(payload.get("max_tokens") or 16)
        pieces = [rng.choice(WORDS) for _ in range(min(length, cap))]
        logprobs = [-round(rng.random() * 3, 4) for _ in pieces]
        return pieces, logprobs, "length" if length > cap else "stop"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self, method: str) -> None:
        proxy: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy.next_fault(method)
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("500", "429"):
            data = b'{"error": "injected"}'
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", str(proxy.retry_after))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fault == "slow":
            time.sleep(proxy.slow_seconds)
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
        upstream.request(method, self.path, body=body or None, headers=dict(self.headers))
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up on a slow reply
            self.close_connection = True

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


class FaultProxy(_Server):
    """Forwards to ``upstream_port`` with faults: ``plan(n)`` names the n-th POST's fault
    ("500", "429", "drop", "slow" or None). GET requests pass untouched."""

    handler = _ProxyHandler

    def __init__(self, upstream_port: int, plan: Callable[[int], str | None],
                 retry_after: float = 1, slow_seconds: float = 2.0) -> None:
        self.upstream_port = upstream_port
        self.plan = plan
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.faults: Counter = Counter()
        self.times: list[tuple[float, str | None]] = []
        self._count = 0
        self._lock = threading.Lock()

    def next_fault(self, method: str) -> str | None:
        if method != "POST":
            return None
        with self._lock:
            fault = self.plan(self._count)
            self._count += 1
            self.faults[fault] += 1
            self.times.append((time.monotonic(), fault))
        return fault


def random_plan(seed: int, rates: dict[str, float]) -> Callable[[int], str | None]:
    """A seeded plan injecting each fault with its probability."""
    rng = random.Random(seed)
    drawn: list[str | None] = []

    def plan(n: int) -> str | None:
        while len(drawn) <= n:
            x, fault = rng.random(), None
            for name, rate in rates.items():
                if x < rate:
                    fault = name
                    break
                x -= rate
            drawn.append(fault)
        return drawn[n]

    return plan
