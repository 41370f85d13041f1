"""Running a teacher backend over prompt records: the driver behind ``dasd sample``.

:func:`sample_records` reads the session's records, plans each one's jobs
(:class:`~dasd_cli.core.sampling.Planner`), skips the ids already written (``--resume``)
and hands the rest to a :class:`ChunkRunner`, which feeds the backend in chunks and writes
each result as a response record, in input order or, when resuming, as it completes.
:func:`sample_with_teacher` opens the teacher backend of a :class:`SampleSettings` and
plans with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from dasd_cli import io
from dasd_cli.backends.base import Backend
from dasd_cli.core.sampling import Job, Planner, build_record
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError

if TYPE_CHECKING:  # rich is imported on use (io.progress)
    from rich.progress import Progress

DEFAULT_CHUNK = 256  # requests handed to a backend at once unless it asks otherwise


@dataclass
class SampleSettings:
    """How ``dasd sample`` samples: its flags, every one given (the command builds it)."""

    model: str | None  # the sampler (the teacher for DAS, the student on-policy): a folder or
    # .gguf file, or the served model name (openai)
    backend: str  # hf | vllm | openai
    n: int  # samples per prompt and temperature
    temperature: list[float]  # every temperature sampled
    top_p: float
    max_tokens: int | None  # new tokens per sample at most (None: the default, or none with a ratio)
    max_tokens_ratio: float | None  # cap at this times the record's existing response (mixed policy)
    continue_: bool  # continue the record's response from a random cut
    cut_min: float  # with continue_: the cut lies beyond this fraction of the response
    system_prompt: str | None  # added where a record has no system turn
    shard: str | None  # K/N: only the input records i with i mod N == K
    resume: bool  # sample only the ids -o does not hold yet, appending as they complete
    server_logprobs: str | None  # openai: raw | processed, as the server's operator knows
    token_ids: bool  # also record the sampled token ids (sampler.token_ids; hf and vllm)
    # The backend's own settings: hf, vllm or openai each take the ones it uses.
    dtype: str
    device: str
    batch_size: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    enforce_eager: bool
    base_url: str | None
    endpoint: str
    api_key_env: str  # the name of the variable holding the API key, never the key
    concurrency: int
    max_retries: int
    timeout: float
    tokenizer: str | None


def sample_with_teacher(session: SamplingSession, settings: SampleSettings, *, seed: int,
                        shard: tuple[int, int] | None = None,
                        done: frozenset[str] | set[str] = frozenset(), quiet: bool = False) -> None:
    """Open the teacher backend of ``settings`` and sample every record of ``session``
    (:func:`sample_records`; records as they complete with ``resume``)."""
    from dasd_cli.backends import get_backend

    s = settings
    # Every setting goes to the backend, which takes the ones it knows (get_backend).
    options: dict[str, Any] = {f.name: getattr(s, f.name) for f in fields(s)}
    options["seed"] = seed
    if s.server_logprobs is not None:
        options["logprobs_mode"] = s.server_logprobs
    with get_backend(s.backend, **options) as engine:
        planner = Planner(s.temperature, n=s.n, top_p=s.top_p, max_tokens=s.max_tokens,
                          ratio=s.max_tokens_ratio, continue_=s.continue_, cut_min=s.cut_min,
                          system_prompt=s.system_prompt, seed=seed, token_count=engine.token_count)
        sample_records(session, engine, planner, shard=shard, done=done, ordered=not s.resume,
                       quiet=quiet, token_ids=s.token_ids)


class SamplingSession(Protocol):
    """What the driver needs of a command's session: its records, counts and outcomes."""

    tally: Tally

    def records(self, inputs: list[str] | None = None, shard: tuple[int, int] | None = None
                ) -> Iterator[io.Line]: ...

    def emit(self, record: dict[str, Any]) -> None: ...

    def drop(self, line: io.Line, by: str, reason: str, detail: str = "") -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def sample_records(session: SamplingSession, engine: Backend, planner: Planner, *,
                   shard: tuple[int, int] | None = None, done: frozenset[str] | set[str] = frozenset(),
                   ordered: bool = True, quiet: bool = False, token_ids: bool = False) -> None:
    """Sample every record of ``session`` with ``engine`` and write the response records.

    ``done`` holds ids already written (skipped and counted as ``resumed``); ``ordered``
    keeps input order, otherwise each record is written as soon as it completes;
    ``token_ids`` also records the sampled token ids. Counts
    ``tokens``, ``resumed`` and ``tokens_per_s`` in ``session.tally.extra``.
    """
    session.tally.extra.update(resumed=0, tokens=0)
    display = io.progress(quiet)
    started = time.monotonic()
    run = ChunkRunner(session, engine, ordered=ordered, display=display, token_ids=token_ids)
    try:
        if display is not None:
            display.start()
        for line in session.records(shard=shard):
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


class ChunkRunner:
    """Feeds jobs to the backend in chunks and writes records in order (or as completed)."""

    def __init__(self, session: SamplingSession, engine: Backend, *, ordered: bool,
                 display: Progress | None = None, token_ids: bool = False) -> None:
        self.session, self.engine, self.ordered, self.display = session, engine, ordered, display
        self.token_ids = token_ids  # record the sampled token ids too
        self.chunk_size = getattr(engine, "chunk_requests", DEFAULT_CHUNK)
        self.pending: list[Job] = []
        self.task = display.add_task("sampling", total=None, rate="") if display is not None else None

    def add(self, jobs: list[Job]) -> None:
        """Queue jobs; a full chunk runs at once."""
        self.pending.extend(jobs)
        if len(self.pending) >= self.chunk_size:
            self._run(self.pending)
            self.pending = []

    def finish(self) -> None:
        """Run what is still queued."""
        if self.pending:
            self._run(self.pending)
            self.pending = []

    def _run(self, jobs: list[Job]) -> None:
        by_key = {job.request.key: job for job in jobs}
        fingerprint = getattr(self.engine, "tokenizer_fingerprint", None)  # Backend's; None elsewhere
        tokenizer = fingerprint() if fingerprint is not None else None
        done: dict[str, dict[str, Any]] = {}
        next_index = 0
        started = time.monotonic()
        tokens = 0
        try:
            for generation in self.engine.generate([job.request for job in jobs]):
                job = by_key[generation.key]
                record = build_record(job, generation, self.engine.model_name, tokenizer,
                                      token_ids=self.token_ids)
                tokens += len(generation.logprobs)  # one per generated token, on every backend
                self.session.tally.extra["tokens"] += len(generation.logprobs)
                if not self.ordered:
                    self.session.emit(record)
                else:
                    done[generation.key] = record
                    while next_index < len(jobs) and jobs[next_index].request.key in done:
                        self.session.emit(done.pop(jobs[next_index].request.key))
                        next_index += 1
                if self.display is not None and self.task is not None:
                    rate = tokens / max(time.monotonic() - started, 1e-9)
                    self.display.update(self.task, advance=1, rate=f"{rate:.1f} tok/s")
        finally:
            for key in [job.request.key for job in jobs[next_index:]]:
                if key in done:  # on a failure, keep every completed sample (out of order)
                    self.session.emit(done.pop(key))
