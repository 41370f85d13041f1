"""Any OpenAI-compatible HTTP server: vLLM serve, SGLang, llama.cpp server, hosted APIs.

- ``--endpoint chat`` sends the messages; an assistant prefix (``--continue``) goes as a
  final assistant message with ``continue_final_message`` (a vLLM/SGLang extension).
  ``--endpoint completions`` renders the prompt with a local tokenizer's chat template
  (the rule of core/chat.py) and appends the prefix byte-exact.
- Requests run on ``concurrency`` worker threads. Connection errors, timeouts, HTTP 408,
  429 and 5xx are retried with exponential backoff and jitter; a ``Retry-After`` header
  (429/503) is honoured. Other HTTP errors fail at once. After ``max_retries`` the run
  stops with an error; samples completed before that have already been handed back.
- Log-probs: an OpenAI-compatible reply gives each token's log-prob but not which
  distribution it is from. vLLM serves the raw (temperature 1) one unless started with
  ``--logprobs-mode processed_logprobs``; other servers and hosted APIs may return the
  sampling distribution's. The reply cannot tell, so records say ``logprobs_mode``
  "unknown" unless the user declares the server's mode (``dasd sample --server-logprobs``).
- The API key is read from the environment variable named by ``api_key_env`` and is
  only ever put in the Authorization header: never logged, never in an error or record.
- Servers with a reasoning parser return ``reasoning_content`` apart from ``content``;
  they are joined into the canonical ``<think>\\n...\\n</think>\\n\\nANSWER`` and each
  token's offset is mapped from the raw generated text into that joined text.
"""

from __future__ import annotations

import codecs
import difflib
import email.utils
import http.client
import os
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from dasd_cli.backends.base import Backend, Generation, GenerationRequest, Scored, ScoreRequest
from dasd_cli.model.tokens import byte_offsets
from dasd_cli.errors import DasdError, UsageError

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
BACKOFF_BASE = 0.5  # seconds before the first retry (doubles each time)
BACKOFF_MAX = 30.0  # seconds: the longest wait between two attempts


class OpenAIBackend(Backend):
    """Sampling through an OpenAI-compatible server (chat or completions endpoint)."""

    name = "openai"
    chunk_requests = 1024  # requests queued at once; the server batches what is in flight

    def __init__(self, model: str | None = None, base_url: str | None = None, endpoint: str = "chat",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, max_retries: int = 6,
                 timeout: float = 600.0, tokenizer: str | None = None, logprobs_mode: str = "unknown",
                 backoff_base: float = BACKOFF_BASE, **_ignored: Any) -> None:
        if not base_url:
            raise UsageError("--backend openai needs --base-url URL", hint="e.g. --base-url http://127.0.0.1:8000/v1")
        if endpoint not in ("chat", "completions"):
            raise UsageError(f"--endpoint must be chat or completions, not {endpoint!r}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UsageError(f"--base-url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url
        self._scheme, self._host, self._port = url.scheme, url.hostname, url.port
        self._prefix = url.path.rstrip("/")
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.logprobs_mode = logprobs_mode
        self._api_key = os.environ.get(api_key_env) or None
        self._tokenizer_spec = tokenizer
        self._tokenizer: Any = None
        self._local = threading.local()
        self._stop = threading.Event()
        self.model_name = model or self._served_model()
        if endpoint == "completions":
            _ = self.tokenizer  # load once here: imports are not safe from many threads at once

    # -- HTTP
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def request_json(self, method: str, path: str, payload: dict[str, Any] | None = None,
                     what: str = "request") -> dict[str, Any]:
        """One API call with retries; returns the parsed JSON reply."""
        body = orjson.dumps(payload) if payload is not None else None
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=body, headers=self._headers())
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                problem = f"connection to {self.base_url} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if status == 200:
                    try:
                        reply = orjson.loads(data)
                        if isinstance(reply, dict):
                            return reply
                        problem = "reply is not a JSON object"
                    except orjson.JSONDecodeError:
                        problem = "reply is not valid JSON"
                elif status in RETRY_STATUSES:
                    problem = f"HTTP {status}"
                    retry_after = parse_retry_after(response.getheader("Retry-After"))
                else:
                    raise DasdError(f"{what}: server answered HTTP {status}: {_excerpt(data)}",
                                    hint=_hint_for(status))
            attempt += 1
            if attempt > self.max_retries:
                raise DasdError(f"{what} failed after {self.max_retries} retries: {problem}",
                                hint=f"is the server up at {self.base_url}? "
                                "raise --max-retries or --timeout; rerun with -o PATH --resume to keep going")
            if self._stop.wait(backoff_delay(attempt, self.backoff_base, retry_after)):
                raise DasdError(f"{what} cancelled")

    def _served_model(self) -> str:
        reply = self.request_json("GET", "/models", what="listing models")
        try:
            return str(reply["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise DasdError("the server lists no model", hint="pass --model NAME") from None

    # -- generation
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Generation]:
        todo: queue.Queue[GenerationRequest] = queue.Queue()
        for request in requests:
            todo.put(request)
        results: queue.Queue[tuple[Generation | None, BaseException | None]] = queue.Queue()
        self._stop.clear()

        def work() -> None:
            while not self._stop.is_set():
                try:
                    request = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results.put((self._generate_one(request), None))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    results.put((None, exc))

        workers = [threading.Thread(target=work, daemon=True, name=f"dasd-openai-{i}")
                   for i in range(min(self.concurrency, len(requests)))]
        for worker in workers:
            worker.start()
        try:
            for _ in range(len(requests)):
                generation, error = results.get()
                if error is not None:
                    raise error
                assert generation is not None
                yield generation
        finally:
            self._stop.set()  # workers stop taking requests and leave their backoff waits

    def _generate_one(self, request: GenerationRequest) -> Generation:
        common = {"model": self.model_name, "temperature": request.temperature, "top_p": request.top_p,
                  "max_tokens": request.max_tokens, "seed": request.seed, "n": 1}
        if self.endpoint == "chat":
            messages = list(request.messages)
            payload = {**common, "messages": messages, "logprobs": True, "top_logprobs": 0}
            if request.prefix:
                messages.append({"role": "assistant", "content": request.prefix})
                payload.update(continue_final_message=True, add_generation_prompt=False)
            reply = self.request_json("POST", "/chat/completions", payload, what=f"sample {request.key}")
            return parse_chat(reply, request, self.logprobs_mode)
        from dasd_cli.core.chat import render_prompt

        prompt = render_prompt(self.tokenizer, request.messages) + request.prefix
        payload = {**common, "prompt": prompt, "logprobs": 1, "add_special_tokens": False}
        reply = self.request_json("POST", "/completions", payload, what=f"sample {request.key}")
        return parse_completion(reply, request, self.logprobs_mode)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from dasd_cli.model.load import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer_spec)
        return self._tokenizer

    def token_count(self, text: str) -> int:
        from dasd_cli.core.chat import encode_ids

        return len(encode_ids(self.tokenizer, text))

    def score(self, requests: Sequence[ScoreRequest]) -> Iterator[Scored]:
        raise DasdError("the openai backend cannot score (chat APIs return no prompt log-probs)",
                        hint="score with --backend hf or --backend vllm")

    def close(self) -> None:
        self._stop.set()
        self._drop_connection()


# --------------------------------------------------------------------------- replies


def parse_chat(reply: dict[str, Any], request: GenerationRequest, mode: str = "unknown") -> Generation:
    """A chat completion reply as a Generation (reasoning joined into <think> form)."""
    choice = _first_choice(reply, request.key)
    message = choice.get("message") or {}
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    entries = ((choice.get("logprobs") or {}).get("content")) or []
    pieces = [bytes(e["bytes"]) if e.get("bytes") is not None else str(e.get("token", "")).encode()
              for e in entries]
    logprobs = [float(e["logprob"]) for e in entries]
    raw, offsets = byte_offsets(pieces)
    if reasoning and not request.prefix:
        text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
    elif request.prefix and raw:
        text = raw  # a continuation: the generated text itself, whatever the parser split
    else:
        text = content
    if (content or reasoning) and not entries:
        raise DasdError(f"sample {request.key}: the server returned no log-probs",
                        hint="dasd needs per-token log-probs (logprobs=true); use a server that returns them")
    raw, offsets, logprobs = drop_end_of_turn(raw, text, offsets, logprobs, _finish(choice))
    return Generation(key=request.key, text=text, token_ids=[], logprobs=logprobs,
                      offsets=map_offsets(raw, text, offsets), finish_reason=_finish(choice),
                      logprobs_mode=mode)


def parse_completion(reply: dict[str, Any], request: GenerationRequest, mode: str = "unknown") -> Generation:
    """A completions reply as a Generation."""
    choice = _first_choice(reply, request.key)
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    if text and not tokens:
        raise DasdError(f"sample {request.key}: the server returned no log-probs",
                        hint="dasd needs per-token log-probs (logprobs=1)")
    pieces = [_token_bytes(t) for t in tokens]
    raw, offsets = byte_offsets(pieces)
    logprobs = [float(x) if x is not None else 0.0 for x in lp.get("token_logprobs") or []]
    raw, offsets, logprobs = drop_end_of_turn(raw, text, offsets, logprobs, _finish(choice))
    return Generation(key=request.key, text=text, token_ids=[], logprobs=logprobs,
                      offsets=map_offsets(raw, text, offsets), finish_reason=_finish(choice),
                      logprobs_mode=mode)


def drop_end_of_turn(raw: str, text: str, offsets: list[int], logprobs: list[float],
                     finish: str) -> tuple[str, list[int], list[float]]:
    """Servers (vLLM) list the end-of-turn token of a stopped sample: drop it.

    Such a token adds no text, or text that the response does not end with
    (``<|im_end|>``); it is not a response token (DESIGN.md "Response": one
    entry per generated token).
    """
    while finish == "stop" and offsets:
        last = raw[offsets[-1]:]
        if last and text.endswith(last):
            break
        raw, offsets, logprobs = raw[:offsets[-1]], offsets[:-1], logprobs[:-1]
    return raw, offsets, logprobs


def map_offsets(raw: str, text: str, offsets: list[int]) -> list[int]:
    """Move offsets into ``raw`` onto ``text`` (equal, a suffix of it, or a light edit of it).

    Characters that survive into ``text`` keep their token; a token whose start was
    removed (e.g. a ``<think>`` tag a parser stripped) goes to where the next kept
    character landed, so offsets stay non-decreasing and inside ``text``.
    """
    if raw == text:
        return offsets
    if text.endswith(raw):
        shift = len(text) - len(raw)
        return [o + shift for o in offsets]
    target = [0] * (len(raw) + 1)
    blocks = difflib.SequenceMatcher(None, raw, text, autojunk=False).get_matching_blocks()
    position = 0
    for a, b, size in blocks:  # ascending; the last block is the (len, len, 0) sentinel
        while position < a:
            target[position] = b
            position += 1
        for k in range(size):
            target[a + k] = b + k
        position = a + size
    last = max(len(text) - 1, 0)
    return [min(target[min(o, len(raw))], last) for o in offsets]


def _token_bytes(token: str) -> bytes:
    if token.startswith("bytes:"):  # vLLM's spelling of a token that is not valid UTF-8 alone
        return codecs.escape_decode(token[len("bytes:"):])[0]
    return token.encode("utf-8")


def _first_choice(reply: dict[str, Any], key: str) -> dict[str, Any]:
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise DasdError(f"sample {key}: the server's reply has no choices", hint=_excerpt(orjson.dumps(reply)))
    return choices[0]


def _finish(choice: dict[str, Any]) -> str:
    return "length" if choice.get("finish_reason") == "length" else "stop"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Seconds before retry ``attempt`` (1-based): Retry-After if given, else exponential
    backoff with equal jitter, capped at BACKOFF_MAX."""
    if retry_after is not None:
        return retry_after
    ceiling = min(BACKOFF_MAX, base * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def _hint_for(status: int) -> str:
    if status in (401, 403):
        return "check the API key: its environment variable is named by --api-key-env"
    if status == 404:
        return "check --base-url (it usually ends in /v1), --endpoint and --model"
    return "the request was refused; check --model, --max-tokens and the server's limits"
