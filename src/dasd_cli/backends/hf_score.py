"""Teacher-forced log-probs of response tokens with transformers, fast and lean.

What makes it fast and small (the naive way is one padded forward in input order and a
full [tokens x vocab] log-softmax):

- requests are packed, without padding, into rows of at most ``batch_tokens`` tokens
  (best-fit decreasing, as in ``dasd pack``); position ids restart at 0 for every request and each
  attends only within itself: varlen boundaries on flash-attention, and on sdpa/eager
  the ``dasd_segmented`` attention of training (causal sdpa per request, switched on for
  each row and restored after). Exact: each request sees what it would see alone;
- models that cannot take another attention function fall back to length-sorted padded
  batches within ``batch_tokens``, right-padded and run without an attention mask (under
  a causal mask a real token never sees the padding after it);
- only the hidden states that predict response tokens go through the output layer, in
  chunks of rows; each chunk's target log-prob is logit[target] - logsumexp(logits) in
  fp32, so the full log-softmax over the vocabulary never exists in memory.

The prompt is rendered with the model's chat template (core/chat.py); its tokens are
context only. The end-of-turn text is not scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dasd_cli.backends.base import Scored, ScoreRequest
from dasd_cli.core.chat import encode_example

DEFAULT_BATCH_TOKENS = 16384
# fp32 logits held at once by the output layer: rows x vocab <= this (2**23 floats = 32 MiB).
# Small enough that each pass over a chunk (projection, log-sum-exp) stays close to the cache.
LOGIT_CHUNK_ELEMENTS = 2 ** 23


@dataclass
class _Item:
    key: str
    input_ids: list[int]
    prompt_len: int
    offsets: list[int]


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each within ``batch_tokens`` padded tokens.

    A sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the first one is the longest
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_rows(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices packed into rows of at most ``batch_tokens`` tokens, with ``dasd pack``'s
    best-fit decreasing. A sequence longer than the budget gets a row of its own, first."""
    from dasd_cli.core.pack import best_fit_decreasing, bin_members

    alone = sorted((i for i, n in enumerate(lengths) if n > batch_tokens), key=lambda i: (-lengths[i], i))
    fitting = [i for i, n in enumerate(lengths) if n <= batch_tokens]
    bins = bin_members(best_fit_decreasing([lengths[i] for i in fitting], batch_tokens))
    return [[i] for i in alone] + [[fitting[j] for j in members] for members in bins]


def _packable(model: Any) -> bool:
    """Varlen attention already, or sdpa/eager on a model that takes another attention
    function and has nothing (sliding windows, soft-capping, sinks) plain causal attention drops."""
    from dasd_cli.model import attention, packed

    impl = getattr(model.config, "_attn_implementation", None)
    return impl in packed.VARLEN_BACKENDS or (
        impl in packed.MASKED_BACKENDS and getattr(model, "_supports_attention_backend", False)
        and attention.unsupported(model.config, model) is None)


@contextlib.contextmanager
def _isolating_attention(model: Any) -> Iterator[None]:
    """sdpa/eager switched to segmented attention for the block (restored after)."""
    from dasd_cli.model import attention, packed

    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in packed.MASKED_BACKENDS:
        yield
        return
    model.set_attn_implementation(attention.register())
    try:
        yield
    finally:
        model.set_attn_implementation(impl)


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body (hidden states) and the output layer of a causal LM."""
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        raise TypeError(f"{type(model).__name__}: cannot split into body and output layer")
    return body, head


def target_logprobs(hidden: Any, head: Any, targets: Any, *, softcap: float | None = None,
                    chunk_elements: int = LOGIT_CHUNK_ELEMENTS) -> Any:
    """log p(target_i | hidden_i) for each row, via chunked logsumexp (fp32 float tensor)."""
    import torch

    vocab = head.weight.shape[0]
    rows = max(1, chunk_elements // vocab)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        logits = head(hidden[start:start + rows]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        picked = logits.gather(1, targets[start:start + rows, None]).squeeze(1)
        # log-sum-exp in place on the chunk (torch.logsumexp would allocate two more copies)
        peak = logits.amax(dim=-1, keepdim=True)
        total = logits.sub_(peak).exp_().sum(dim=-1)
        out[start:start + rows] = picked - peak.squeeze(1) - total.log_()
    return out


def score_batches(model: Any, tokenizer: Any, requests: Iterable[ScoreRequest],
                  batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Iterator[Scored]:
    """Student log-probs of every response token given its prompt; any order (match on key).

    ``model`` is a causal LM in eval mode, ``tokenizer`` its (fast) tokenizer. Each result
    has one log-prob and one start character per response token.
    """
    items = []
    for req in requests:
        enc = encode_example(tokenizer, req.messages, req.response, add_end_of_turn=False,
                             response_tokens=req.response_tokens)
        if enc.prompt_len == 0 and enc.response_len:
            raise ValueError(f"{req.key}: the chat template rendered an empty prompt; "
                             "the first response token has no context to be scored in")
        items.append(_Item(req.key, enc.input_ids, enc.prompt_len, enc.response_offsets))
    lengths = [len(it.input_ids) for it in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    body, head = _decoder_and_head(model)
    output = _Output(head, getattr(model.config, "final_logit_softcapping", None))
    packed = _packable(model)
    for group in plan_rows(lengths, batch_tokens) if packed else plan_batches(lengths, batch_tokens):
        members = [items[i] for i in group]
        if packed:
            with _isolating_attention(model):  # not held across the yields below
                logprobs = _score_packed(model, output, members)
        else:
            logprobs = _score_padded(body, output, members, pad_id)
        at = 0
        for it in members:
            n = len(it.input_ids) - it.prompt_len
            yield Scored(it.key, logprobs[at:at + n], list(it.offsets), {"tokens": n})
            at += n


@dataclass
class _Output:
    """The output layer: log-probs of the targets of the hidden states that predict them."""

    head: Any
    softcap: float | None

    @property
    def device(self) -> Any:
        return self.head.weight.device

    def logprobs(self, selected: Any, targets: Any) -> list[float]:
        return target_logprobs(selected, self.head, targets, softcap=self.softcap).cpu().tolist()


def _score_packed(model: Any, output: _Output, members: list[_Item]) -> list[float]:
    """Response-token log-probs of ``members`` packed into one row, each isolated."""
    import torch

    from dasd_cli.model import packed

    device = output.device
    ids = torch.tensor([[t for it in members for t in it.input_ids]], dtype=torch.long, device=device)
    positions = torch.tensor([[p for it in members for p in range(len(it.input_ids))]],
                             dtype=torch.long, device=device)
    predicting, start = [], 0  # position p predicts the token at p + 1
    for it in members:
        predicting.extend(range(start + it.prompt_len - 1, start + len(it.input_ids) - 1))
        start += len(it.input_ids)
    with torch.inference_mode():
        hidden = packed.hidden_states(model, ids, positions)[0]
        index = torch.tensor(predicting, dtype=torch.long, device=device)
        selected = hidden[index]
        del hidden
        return output.logprobs(selected, ids[0, index + 1])


def _score_padded(body: Any, output: _Output, members: list[_Item], pad_id: int) -> list[float]:
    """Response-token log-probs of ``members`` as one right-padded batch, no attention mask."""
    import torch

    device = output.device
    width = max(len(it.input_ids) for it in members)
    ids = torch.full((len(members), width), pad_id, dtype=torch.long)
    rows_b, rows_p = [], []
    for b, it in enumerate(members):
        ids[b, :len(it.input_ids)] = torch.tensor(it.input_ids, dtype=torch.long)
        positions = range(it.prompt_len - 1, len(it.input_ids) - 1)
        rows_b.extend([b] * len(positions))
        rows_p.extend(positions)
    ids = ids.to(device)
    with torch.inference_mode():
        # No attention mask: right padding is invisible to real tokens under causality.
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        b_index = torch.tensor(rows_b, dtype=torch.long, device=device)
        p_index = torch.tensor(rows_p, dtype=torch.long, device=device)
        selected = hidden[b_index, p_index]
        del hidden
        return output.logprobs(selected, ids[b_index, p_index + 1])
