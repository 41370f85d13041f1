"""Teacher-forced log-probs of response tokens with the vLLM engine (prompt log-probs).

The whole sequence (prompt under the chat template + response) is handed to vLLM as one
prompt of token ids with ``prompt_logprobs=0`` and one generated token: vLLM then
returns, for every prompt position, the log-prob of the token actually there. The
response tokens' entries are the scores; the prompt's are context only. The engine must
run with ``logprobs_mode="raw_logprobs"`` (backends/vllm.py does) and skips its prefix
cache for such requests on its own, so every position gets its log-prob.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from dasd_cli.backends.base import Scored, ScoreRequest
from dasd_cli.core.chat import encode_example
from dasd_cli.errors import DasdError


def _calls(lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Consecutive index groups of at most ``batch_tokens`` tokens (at least one each)."""
    group: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if group and total + n > batch_tokens:
            yield group
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        yield group


def score_batches(llm: Any, tokenizer: Any, requests: Iterable[ScoreRequest],
                  batch_tokens: int = 1 << 20) -> Iterator[Scored]:
    """Student log-probs of every response token given its prompt, in request order.

    ``llm`` is a ``vllm.LLM``; ``batch_tokens`` bounds the tokens handed to one
    ``generate`` call (vLLM schedules inside it).
    """
    from vllm import SamplingParams

    requests = list(requests)
    encoded = [encode_example(tokenizer, r.messages, r.response, add_end_of_turn=False,
                              response_tokens=r.response_tokens) for r in requests]
    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
    for group in _calls([len(e.input_ids) for e in encoded], batch_tokens):
        prompts = [{"prompt_token_ids": encoded[i].input_ids} for i in group]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        for i, output in zip(group, outputs):
            enc, request = encoded[i], requests[i]
            entries = output.prompt_logprobs or []
            if len(entries) != len(enc.input_ids):
                raise DasdError(f"vLLM returned {len(entries)} prompt log-probs for "
                                f"{len(enc.input_ids)} tokens ({request.key})")
            logprobs = [float(entries[p][enc.input_ids[p]].logprob)
                        for p in range(enc.prompt_len, len(enc.input_ids))]
            yield Scored(request.key, logprobs, list(enc.response_offsets), {"tokens": len(logprobs)})
