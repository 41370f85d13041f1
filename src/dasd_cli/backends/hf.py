"""The transformers backend: the reference implementation of sampling with raw log-probs.

Generation runs ``model.generate`` in greedy mode with one logits processor,
:class:`SeededSampler`, that does the actual sampling. That processor sees the model's
unscaled logits, so it records the RAW log-probability of the token it picks (the
log-softmax of the temperature-1 distribution, METHOD.md section 2) whatever the sampling
temperature, and it draws with one generator per request, seeded from the request, so a
sample does not depend on which other requests share its batch (up to floating point).

Batches are grouped by prompt length (little padding) and bounded by rows and tokens.

Offsets: a sampled token sequence is not always the tokenizer's canonical tokenization
of its own text. The record stores one log-prob and one offset per GENERATED token; the
offsets come from the tokens (:func:`dasd_cli.model.tokens.token_offsets`), so they always index the
response text. Re-tokenizing the response reproduces ids and offsets exactly whenever
the sampled sequence is canonical (the common case; the tests measure how often).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dasd_cli.model import load as models
from dasd_cli.model.tokens import stop_ids, token_offsets
from dasd_cli.backends.base import Backend, Generation, GenerationRequest, Scored, ScoreRequest
from dasd_cli.core.chat import encode_ids, render_prompt

DEFAULT_BATCH_SIZE = 16  # sequences generated together
DEFAULT_BATCH_TOKENS = 65536  # rows x (longest prompt + max new tokens) per batch
_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # one model per process and spec


class SeededSampler:
    """A logits processor that samples each row with its own generator.

    It is the only processor in a greedy ``generate`` call: it receives the raw logits,
    stores the raw log-prob of the token it picks, and returns scores where only that
    token is finite, so greedy selection takes it. Rows past their own token cap are
    forced to the stop token (and remembered as cut by length).
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], seeds: list[int],
                 caps: list[int], stop_id: int) -> None:
        import torch

        self.temperatures = torch.tensor(temperatures, dtype=torch.float32)
        self.top_ps = torch.tensor(top_ps, dtype=torch.float32)
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.caps = caps
        self.stop_id = stop_id
        self.step = 0
        self.logprobs: list[Any] = []  # per step: (rows,) raw log-prob of the chosen token
        self.capped = [False] * len(seeds)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        rows, vocab = scores.shape
        logits = scores.float()
        raw = torch.log_softmax(logits, dim=-1)
        temps = self.temperatures.to(logits.device)
        greedy = temps <= 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps).unsqueeze(1)
        probs = torch.softmax(scaled, dim=-1)
        top_ps = self.top_ps.to(logits.device)
        if bool((top_ps < 1.0).any()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(mass_before >= top_ps.unsqueeze(1), 0.0)
            probs = torch.zeros_like(probs).scatter(1, order, sorted_probs)
        # Inverse CDF: one uniform per row from that row's own generator (cheap: drawing
        # vocab-sized noise per row costs more than the softmax).
        uniforms = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        cdf = probs.double().cumsum(dim=-1)
        targets = (uniforms.to(logits.device) * cdf[:, -1]).unsqueeze(1)
        chosen = torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=vocab - 1)
        # never pick a zero-probability token (float edge at the end of the cdf)
        chosen = torch.where(probs.gather(1, chosen.unsqueeze(1)).squeeze(1) > 0, chosen,
                             torch.argmax(probs, dim=-1))
        chosen = torch.where(greedy, torch.argmax(logits, dim=-1), chosen)
        for row in range(rows):
            if self.step >= self.caps[row]:
                chosen[row] = self.stop_id
                self.capped[row] = True
        self.logprobs.append(raw.gather(1, chosen.unsqueeze(1)).squeeze(1).cpu())
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out


class HFBackend(Backend):
    """transformers on CPU or GPU; bf16 where the hardware runs it fast."""

    name = "hf"
    chunk_requests = 256  # requests handed over at once (room to group by length)

    def __init__(self, model: str | None = None, dtype: str = "auto", device: str = "auto",
                 batch_size: int = DEFAULT_BATCH_SIZE, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 **_ignored: Any) -> None:
        self.model_spec = model
        self.model_name = models.model_name(model)
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        key = (str(models.resolve_model(model)), dtype, device)
        if key not in _LOADED:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # stderr is for dasd's own progress and summary
            _LOADED[key] = (models.load_tokenizer(model, "--model"),
                            models.load_causal_lm(model, dtype=dtype, device=device))
        self.tokenizer, self.model = _LOADED[key]
        self.stop_ids = stop_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    # -- generation
    def encode_request(self, request: GenerationRequest) -> list[int]:
        """Prompt tokens (template with generation prompt) + the assistant prefix's tokens."""
        return (encode_ids(self.tokenizer, render_prompt(self.tokenizer, request.messages))
                + encode_ids(self.tokenizer, request.prefix))

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Generation]:
        encoded = [self.encode_request(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (len(encoded[i]), requests[i].max_tokens))
        batch: list[int] = []
        for index in order:
            trial = batch + [index]
            longest = max(len(encoded[i]) + requests[i].max_tokens for i in trial)
            if batch and (len(trial) > self.batch_size or len(trial) * longest > self.batch_tokens):
                yield from self._generate_batch([requests[i] for i in batch], [encoded[i] for i in batch])
                batch = [index]
            else:
                batch = trial
        if batch:
            yield from self._generate_batch([requests[i] for i in batch], [encoded[i] for i in batch])

    def _generate_batch(self, requests: list[GenerationRequest],
                        encoded: list[list[int]]) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        device = self.model.device
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded],
                                 device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded],
                                 device=device)
        caps = [r.max_tokens for r in requests]
        sampler = SeededSampler([r.temperature for r in requests], [r.top_p for r in requests],
                                [r.seed for r in requests], caps, self.stop_ids[0])
        config = GenerationConfig(max_new_tokens=max(caps), do_sample=False, num_beams=1,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                                  return_dict_in_generate=True)
        # generate() fills every setting left unset in `config` from the model's own
        # generation_config.json, and some ship a repetition penalty (Qwen2.5-Instruct:
        # 1.05), bad words or suppressed tokens: processors that would change the logits
        # before SeededSampler sees them, so the stored log-probs would not be raw.
        # During this call the model's defaults are the library's, which process nothing.
        model_defaults = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                          generation_config=config,
                                          logits_processor=LogitsProcessorList([sampler]))
        finally:
            self.model.generation_config = model_defaults
        sequences = out.sequences[:, width:].tolist()
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else [[]] * len(requests)
        results = []
        stops = set(self.stop_ids)
        for row, request in enumerate(requests):
            tokens = sequences[row]
            end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
            stopped = end < len(tokens) and not (sampler.capped[row] and end == caps[row])
            ids = tokens[:min(end, caps[row])]
            text, offsets = token_offsets(self.tokenizer, ids)
            results.append(Generation(key=request.key, text=text, token_ids=ids,
                                      logprobs=[float(x) for x in logprobs[row][:len(ids)]],
                                      offsets=offsets, finish_reason="stop" if stopped else "length",
                                      logprobs_mode="raw"))
        return results

    # -- scoring
    def score(self, requests: Sequence[ScoreRequest]) -> Iterator[Scored]:
        from dasd_cli.backends.hf_score import score_batches

        yield from score_batches(self.model, self.tokenizer, requests, self.batch_tokens)

    def token_count(self, text: str) -> int:
        return len(encode_ids(self.tokenizer, text))
