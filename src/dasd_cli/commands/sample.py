"""``dasd sample``: draw teacher responses with raw log-probs, one record per sample.

Reads prompt records (or, with --continue / --max-tokens-ratio, response records),
plans one request per (prompt, temperature, sample index), hands chunks of requests to
a backend and writes each result as a response record (DESIGN.md "Records").
Records keep input order; with --resume they are written as they complete instead.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Optional

import orjson
import typer

from dasd_cli import io
from dasd_cli.backends.base import BACKENDS, Generation, GenerationRequest
from dasd_cli.commands import common
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.continuation import DEFAULT_CUT_MIN, choose_cut, cut_rng
from dasd_cli.errors import RecordError, UsageError

DEFAULT_TEMPERATURE = 0.6  # METHOD.md: the low temperature of stage 1
DEFAULT_MAX_TOKENS = 1024  # new tokens per sample unless --max-tokens says otherwise
STALE_FIELDS = ("das", "prefix_chars", "rejected")  # described the response being replaced


@dataclass
class Job:
    """One planned sample: the request and what its record is built from."""

    request: GenerationRequest
    record: dict[str, Any]
    prompt_id: str
    prefix: str


class ServerLogprobs(str, Enum):
    """What an OpenAI-compatible server's log-probs are, as its operator declares."""

    raw = "raw"
    processed = "processed"


def sample_command(
    inputs: common.Inputs = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="PATH|NAME", help="Teacher: a local transformers folder or .gguf file "
        "(hf, vllm), or the served model name (openai). Default: the embedded "
        "SmolLM2-135M-Instruct.", show_default=False)] = None,
    backend: Annotated[str, typer.Option("--backend", metavar="|".join(BACKENDS),
                                         help="Model access: hf (transformers), vllm, openai (HTTP).")] = "hf",
    n: Annotated[int, typer.Option("-n", "--num-samples", min=1, help="Samples per prompt and temperature.")] = 1,
    temperature: Annotated[Optional[list[float]], typer.Option(
        "--temperature", "-t", metavar="T", help="Sampling temperature; repeat to sample each in one "
        f"run [default: {DEFAULT_TEMPERATURE}]. 0 is greedy.", show_default=False)] = None,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", min=1, help=f"New tokens per sample at most [default: {DEFAULT_MAX_TOKENS}; "
        "with --max-tokens-ratio: no extra cap].", show_default=False)] = None,
    max_tokens_ratio: Annotated[Optional[float], typer.Option(
        "--max-tokens-ratio", metavar="R", min=0.0, help="Cap each sample at floor(R x the token count of the "
        "record's existing 'response' under this model's tokenizer) (mixed policy: 1.5).",
        show_default=False)] = None,
    continue_: Annotated[bool, typer.Option(
        "--continue", help="Continue each record's 'response' (the student's) from a random cut "
        "beyond --cut-min of its length, snapped back to a sentence or line boundary.")] = False,
    cut_min: Annotated[float, typer.Option(
        "--cut-min", metavar="F", min=0.0, max=0.99, help="With --continue: the cut lies beyond this "
        "fraction of the response's characters.")] = DEFAULT_CUT_MIN,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", metavar="TEXT", help="System turn added where a record has none.",
        show_default=False)] = None,
    shard: common.Shard = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="With -o (plain .jsonl): keep the records already there, sample only the "
        "missing ids, append each record as it completes.")] = False,
    dtype: Annotated[str, typer.Option("--dtype", metavar="auto|bf16|fp16|fp32",
                                       help="hf/vllm weights dtype (auto: bf16 where fast).")] = "auto",
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="hf device.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="hf: sequences per batch.")] = 16,
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", min=1, help="vllm: GPUs per model.")] = 1,
    gpu_memory_utilization: common.GpuMemoryUtilization = common.DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: common.MaxModelLen = None,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", metavar="URL", help="openai: server URL, e.g. http://127.0.0.1:8000/v1.",
        show_default=False)] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", metavar="chat|completions",
                                          help="openai: which API to call.")] = "chat",
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", metavar="VAR", help="openai: environment variable holding the API key "
        "(never logged or written).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai: requests in flight.")] = 8,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="openai: retries per request.")] = 6,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=0.1,
                                           help="openai: socket timeout per attempt.")] = 600.0,
    server_logprobs: Annotated[Optional[ServerLogprobs], typer.Option(
        "--server-logprobs", metavar="raw|processed", help="openai: which log-probs the server "
        "returns, as its operator knows (vLLM: raw unless served with --logprobs-mode "
        "processed_logprobs); recorded as teacher.logprobs_mode. Without it that is unknown, which "
        "dasd score refuses unless told (a reply does not say).", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH", help="openai: local tokenizer for the completions endpoint and "
        "--max-tokens-ratio (default: the embedded default model's).", show_default=False)] = None,
    seed: common.Seed = common.DEFAULT_SEED,
    output: common.Output = None,
    compress: common.Compress = "auto",
    rejects: common.Rejects = None,
    on_error: common.OnError = "fail",
    stats: common.Stats = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Sample teacher responses with raw log-probs: one record per sample.

    Each record carries the prompt's fields plus prompt_id, a deterministic id
    PROMPT@T#K, response, finish_reason and teacher {model, temperature, top_p, seed,
    logprobs, offsets, logprobs_mode}.
    """
    temperatures = temperature or [DEFAULT_TEMPERATURE]
    options = {"model": model, "backend": backend, "n": n, "temperature": temperatures,
               "top_p": top_p, "max_tokens": max_tokens, "max_tokens_ratio": max_tokens_ratio,
               "continue": continue_, "cut_min": cut_min, "system_prompt": system_prompt,
               "shard": shard, "resume": resume,
               "server_logprobs": server_logprobs.value if server_logprobs is not None else None}
    shared = common.Common(inputs=inputs, output=output, compress=compress, quiet=quiet, seed=seed,
                           stats=stats, rejects=rejects, on_error=on_error, debug=debug,
                           options=options)
    backend_options = {"model": model, "dtype": dtype, "device": device, "batch_size": batch_size,
                       "tensor_parallel_size": tensor_parallel_size, "seed": seed,
                       "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
                       "base_url": base_url, "endpoint": endpoint, "api_key_env": api_key_env,
                       "concurrency": concurrency, "max_retries": max_retries, "timeout": timeout,
                       "tokenizer": tokenizer}
    if server_logprobs is not None:
        backend_options["logprobs_mode"] = server_logprobs.value

    def body(session: common.Session) -> None:
        session.kept_word = "wrote"
        if any(t < 0 for t in temperatures):
            raise UsageError("--temperature must be >= 0")
        if top_p <= 0:
            raise UsageError("--top-p must be above 0", hint="1.0 samples from the whole distribution")
        if server_logprobs is not None and backend != "openai":
            raise UsageError("--server-logprobs is for --backend openai",
                             hint="hf and vllm always record raw log-probs")
        if continue_ and max_tokens_ratio is not None:
            raise UsageError("--continue and --max-tokens-ratio are separate steps",
                             hint="cap the student with --max-tokens-ratio, then continue with --continue")
        shard_of = common.parse_shard(shard)
        done: set[str] = set()
        if resume:
            if output is None or output == "-":
                raise UsageError("--resume needs -o PATH", hint="the ids already sampled are read from PATH")
            if io.resolve_compression(compress, output) != "none":
                raise UsageError("--resume needs a plain output", hint="use -o out.jsonl (compress later)")
            done, _count = io.read_existing_ids(output)
            if session.writer is not None:
                session.writer.close(success=False)  # its temp file: appends go to PATH itself
            session.writer = io.RecordWriter(output, "none", append=True)
        session.tally.extra.update(resumed=0, tokens=0)
        from dasd_cli.backends import get_backend

        engine = get_backend(backend, **backend_options)
        planner = Planner(engine, temperatures, n, top_p, max_tokens, max_tokens_ratio,
                          continue_, cut_min, system_prompt, seed)
        display = io.progress(quiet)
        started = time.monotonic()
        run = ChunkRunner(session, engine, ordered=not resume, display=display)
        try:
            if display is not None:
                display.start()
            for line in session.records(shard=shard_of):
                try:
                    jobs = planner.plan(line.record)
                except RecordError as err:
                    session.bad_record(line, err)
                    continue
                if jobs is None:
                    session.drop(line, "sample", "too_short_to_cut", "response under 2 characters")
                    continue
                fresh = [job for job in jobs if job.request.key not in done]
                session.tally.extra["resumed"] += len(jobs) - len(fresh)
                run.add(fresh)
            run.finish()
        finally:
            if display is not None:
                display.stop()
            elapsed = max(time.monotonic() - started, 1e-9)
            session.tally.extra["tokens_per_s"] = round(session.tally.extra["tokens"] / elapsed, 1)
            engine.close()

    common.run_command("sample", shared, body)


class Planner:
    """Turns one input record into its sample jobs (ids, seeds, caps, prefixes)."""

    def __init__(self, engine: Any, temperatures: list[float], n: int, top_p: float,
                 max_tokens: int | None, ratio: float | None, continue_: bool,
                 cut_min: float, system_prompt: str | None, seed: int) -> None:
        self.engine, self.temperatures, self.n, self.top_p = engine, temperatures, n, top_p
        self.max_tokens, self.ratio, self.continue_ = max_tokens, ratio, continue_
        self.cut_min, self.system_prompt, self.seed = cut_min, system_prompt, seed

    def plan(self, record: dict[str, Any]) -> list[Job] | None:
        """The jobs of ``record``; ``None`` when --continue finds nothing to cut."""
        messages = prompt_messages(record, self.system_prompt)
        own_id = record.get("id")
        base_id = str(own_id) if own_id is not None else derived_id(messages)
        prompt_id = str(record.get("prompt_id", base_id)) if (self.continue_ or self.ratio) else base_id
        cap = self.max_tokens if self.max_tokens is not None else (
            None if self.ratio is not None else DEFAULT_MAX_TOKENS)
        if self.ratio is not None:
            budget = max(1, math.floor(self.ratio * self.engine.token_count(response_text(record))))
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


def build_record(job: Job, generation: Generation, model_name: str) -> dict[str, Any]:
    """The response record of one sample (DESIGN.md "Records")."""
    record = {k: v for k, v in job.record.items() if k not in STALE_FIELDS}
    shift = len(job.prefix)  # teacher offsets index the full response
    request = job.request
    record.update({
        "id": request.key,
        "prompt_id": job.prompt_id,
        "response": job.prefix + generation.text,
        "finish_reason": generation.finish_reason,
        "teacher": {"model": model_name, "temperature": request.temperature, "top_p": request.top_p,
                    "seed": request.seed, "logprobs": generation.logprobs,
                    "offsets": [o + shift for o in generation.offsets],
                    "logprobs_mode": generation.logprobs_mode},
    })
    if job.prefix:
        record["prefix_chars"] = shift
    return record


class ChunkRunner:
    """Feeds jobs to the backend in chunks and writes records in order (or as completed)."""

    def __init__(self, session: common.Session, engine: Any, *, ordered: bool, display: Any) -> None:
        self.session, self.engine, self.ordered, self.display = session, engine, ordered, display
        self.chunk_size = getattr(engine, "chunk_requests", 256)
        self.pending: list[Job] = []
        self.task = display.add_task("sampling", total=None, rate="") if display is not None else None

    def add(self, jobs: list[Job]) -> None:
        self.pending.extend(jobs)
        if len(self.pending) >= self.chunk_size:
            self._run(self.pending)
            self.pending = []

    def finish(self) -> None:
        if self.pending:
            self._run(self.pending)
            self.pending = []

    def _run(self, jobs: list[Job]) -> None:
        by_key = {job.request.key: job for job in jobs}
        done: dict[str, dict[str, Any]] = {}
        next_index = 0
        started = time.monotonic()
        tokens = 0
        try:
            for generation in self.engine.generate([job.request for job in jobs]):
                job = by_key[generation.key]
                record = build_record(job, generation, self.engine.model_name)
                tokens += len(generation.logprobs)  # one per generated token, on every backend
                self.session.tally.extra["tokens"] += len(generation.logprobs)
                if not self.ordered:
                    self.session.emit(record)
                else:
                    done[generation.key] = record
                    while next_index < len(jobs) and jobs[next_index].request.key in done:
                        self.session.emit(done.pop(jobs[next_index].request.key))
                        next_index += 1
                if self.display is not None:
                    rate = tokens / max(time.monotonic() - started, 1e-9)
                    self.display.update(self.task, advance=1, rate=f"{rate:.1f} tok/s")
        finally:
            for key in [job.request.key for job in jobs[next_index:]]:
                if key in done:  # on a failure, keep every completed sample (out of order)
                    self.session.emit(done.pop(key))
