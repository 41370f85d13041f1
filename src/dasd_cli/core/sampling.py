"""Planning teacher samples and turning them into response records (``dasd sample``).

Pure: a record goes in, its sample jobs come out (:class:`Planner`); a job and what the
model wrote go in, a response record comes out (:func:`build_record`). No backend is held
here: the one thing planning needs from the model, counting tokens for
``--max-tokens-ratio``, is passed in as a callable. The request and result types are
defined here too, so that backends and this module share them without importing each
other.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.continuation import DEFAULT_CUT_MIN, choose_cut, cut_rng
from dasd_cli.core.provenance import LEGACY_SAMPLER, SAMPLER, TEACHER_SCORES

DEFAULT_TEMPERATURE = 0.6  # METHOD.md section 1: the low temperature of stage 1
DEFAULT_MAX_TOKENS = 1024  # new tokens per sample unless --max-tokens says otherwise
# described the response being replaced (a --continue or --max-tokens-ratio input's)
STALE_FIELDS = ("das", "prefix_chars", "rejected", LEGACY_SAMPLER, TEACHER_SCORES)


@dataclass
class GenerationRequest:
    """One sample to draw: a prompt, optionally an assistant prefix to continue."""

    key: str  # the output record's id; results carry it back
    messages: list[dict[str, str]]
    temperature: float
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0
    prefix: str = ""  # assistant text already written (mixed-policy --continue)


@dataclass
class Generation:
    """What the model wrote for one request, with raw log-probs of its tokens."""

    key: str
    text: str  # the new text only (not the prefix)
    token_ids: list[int]
    logprobs: list[float]  # log p(token) under the unscaled (T=1) distribution when raw
    offsets: list[int]  # start character of each token in ``text``
    finish_reason: str  # "stop" or "length"
    logprobs_mode: str = "raw"  # "raw", "processed" (after temperature/top-p) or "unknown"


@dataclass
class Job:
    """One planned sample: the request and what its record is built from."""

    request: GenerationRequest
    record: dict[str, Any]
    prompt_id: str
    prefix: str


@dataclass
class Planner:
    """Turns one input record into its sample jobs (ids, seeds, caps, prefixes).

    ``token_count`` counts the tokens of a text under the teacher's tokenizer; it is
    called only with ``ratio`` (--max-tokens-ratio). ``continue_`` (--continue) cuts the
    record's own response and plans continuations of the prefix.
    """

    temperatures: list[float]
    n: int = 1
    top_p: float = 1.0
    max_tokens: int | None = None
    ratio: float | None = None
    continue_: bool = False
    cut_min: float = DEFAULT_CUT_MIN
    system_prompt: str | None = None
    seed: int = 0
    token_count: Callable[[str], int] | None = None

    def plan(self, record: dict[str, Any]) -> list[Job] | None:
        """The jobs of ``record``; ``None`` when --continue finds nothing to cut."""
        messages = prompt_messages(record, self.system_prompt)
        own_id = record.get("id")
        base_id = str(own_id) if own_id is not None else derived_id(messages)
        prompt_id = str(record.get("prompt_id", base_id)) if (self.continue_ or self.ratio) else base_id
        cap = self.max_tokens if self.max_tokens is not None else (
            None if self.ratio is not None else DEFAULT_MAX_TOKENS)
        if self.ratio is not None:
            if self.token_count is None:
                raise ValueError("a --max-tokens-ratio planner needs token_count")
            budget = max(1, math.floor(self.ratio * self.token_count(response_text(record))))
            cap = budget if cap is None else min(cap, budget)
        prefix, suffix = "", ""
        if self.continue_:
            cut = choose_cut(response_text(record), cut_rng(self.seed, base_id), self.cut_min)
            if cut is None:
                return None
            prefix, suffix = cut.prefix(response_text(record)), "+cont"
        jobs = []
        for temperature in self.temperatures:
            for k in range(self.n):
                key = f"{base_id}{suffix}@{temperature:g}#{k}"
                request = GenerationRequest(key=key, messages=messages, temperature=temperature,
                                            top_p=self.top_p, max_tokens=int(cap or 1),
                                            seed=request_seed(self.seed, key), prefix=prefix)
                jobs.append(Job(request, record, prompt_id, prefix))
        return jobs


def derived_id(messages: list[dict[str, str]]) -> str:
    """A stable id for a prompt without one: a hash of its messages."""
    return "p-" + hashlib.sha256(orjson.dumps(messages)).hexdigest()[:12]


def request_seed(seed: int, key: str) -> int:
    """The seed of one sample: a function of the run's --seed and the sample's id only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def build_record(job: Job, generation: Generation, model_name: str,
                 tokenizer: str | None = None, token_ids: bool = False) -> dict[str, Any]:
    """The response record of one sample (DESIGN.md "Response"): the sampling model's
    name, tokenizer fingerprint (when known), settings and per-token log-probs go to its
    ``sampler`` block, and with ``token_ids`` the ids of the tokens it generated."""
    record = {k: v for k, v in job.record.items() if k not in STALE_FIELDS}
    shift = len(job.prefix)  # sampler offsets index the full response
    request = job.request
    record.update({
        "id": request.key,
        "prompt_id": job.prompt_id,
        # What the teacher was asked, system turn included: later commands build the
        # student's prompt from it, so no flag has to be repeated to keep them consistent.
        "messages": [dict(m) for m in request.messages],
        "response": job.prefix + generation.text,
        "finish_reason": generation.finish_reason,
        SAMPLER: {"model": model_name, **({"tokenizer": tokenizer} if tokenizer else {}),
                  "temperature": request.temperature, "top_p": request.top_p,
                  "seed": request.seed, "logprobs": generation.logprobs,
                  "offsets": [o + shift for o in generation.offsets],
                  "logprobs_mode": generation.logprobs_mode},
    })
    if token_ids:
        record[SAMPLER]["token_ids"] = [int(t) for t in generation.token_ids]
    if job.prefix:
        record["prefix_chars"] = shift
    return record
