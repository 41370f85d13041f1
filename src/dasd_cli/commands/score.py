"""``dasd score``: divergence-aware sampling scores (METHOD.md section 2).

Adds a ``das`` object to each response record: sentences of the teacher's text with
p_T (from the record's teacher log-probs) and p_S (one teacher-forced pass of the
student), typed teacher / shared / student; ``das.score`` is the teacher-sentence count.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer

from dasd_cli import io
from dasd_cli.backends.base import BACKENDS, ScoreRequest, check_backend_name
from dasd_cli.commands import common
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.das import DEFAULT_ALPHA, DEFAULT_BETA, TokenLogprobs, analyze, das_record, teacher_tokens
from dasd_cli.errors import RecordError, UsageError

WINDOW = 128  # records scored together: room to sort by length, output still in input order


@common.shared_options(shard=True)
def score_command(
    shared: common.Common,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="PATH", help="The STUDENT (before distillation): a model folder or .gguf "
        "file (default: the embedded default model).", show_default=False)] = None,
    beta: Annotated[float, typer.Option(
        "--beta", min=0.0, help="Margin on p_T - p_S: above it a teacher sentence, below minus it "
        "a student sentence, else shared.")] = DEFAULT_BETA,
    distilled: Annotated[Optional[str], typer.Option(
        "--distilled", metavar="PATH", help="Also score with a distilled student (p_D) and mark shared "
        "sentences it boosts (provenance analysis).", show_default=False)] = None,
    alpha: Annotated[float, typer.Option(
        "--alpha", min=0.0, help="With --distilled: a shared sentence is boosted when p_D exceeds "
        "both p_T and p_S by more than this.")] = DEFAULT_ALPHA,
    backend: Annotated[common.choice(*BACKENDS), typer.Option(  # openai: refused with a hint
        "--backend", metavar="hf|vllm", help="Model access for the student forward pass.")] = "hf",
    dtype: Annotated[common.choice("auto", "bf16", "fp16", "fp32"), typer.Option(
        "--dtype", metavar="auto|bf16|fp16|fp32", help="Student weights and activations "
        "(auto: bf16 where the hardware runs it fast).")] = "auto",
    device: Annotated[common.choice("auto", "cpu", "cuda"), typer.Option(
        "--device", metavar="auto|cpu|cuda", help="Where the student runs.")] = "auto",
    batch_tokens: Annotated[int, typer.Option(
        "--batch-tokens", min=1, metavar="N", help="Tokens per forward pass (hf: responses packed "
        "without padding, longest first; vllm: tokens per engine call).")] = 16384,
    gpu_memory_utilization: common.GpuMemoryUtilization = common.DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: common.MaxModelLen = None,
    keep_token_logprobs: Annotated[bool, typer.Option(
        "--keep-token-logprobs", help="Also store the student's per-token log-probs and offsets "
        "(das.student_logprobs, das.student_offsets).")] = False,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", metavar="TEXT",
        help="Only for records without a system turn: adds one. Not needed after `dasd "
        "sample`, whose records carry the messages the teacher was sent (system turn included); "
        "on records sampled without a system turn it adds one the teacher never saw.",
        show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show the first --limit records sentence by sentence: colored text and "
        "a summary table on stderr; with -o FILE.html, one self-contained HTML page instead.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Records shown by --explain.")] = 1,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", metavar="FILE.png", help="Write histograms of response p_teacher per teacher "
        "temperature and of p_student.", show_default=False)] = None,
) -> None:
    """Score teacher responses sentence by sentence against a student (DAS).

    Records that already carry a das object for the same student, beta and distilled
    model are not scored again (so --explain and --plot read scored files without a
    model). Records keep their input order.
    """
    output, shard = shared.output, shared.shard
    html_page = explain and output is not None and output.endswith((".html", ".htm"))
    # On a terminal, --explain's view replaces the records (raw JSON would bury it).
    show_only = explain and (html_page or (output is None and sys.stdout.isatty()))
    options = {"model": model, "beta": beta, "distilled": distilled, "alpha": alpha,
               "backend": backend, "dtype": dtype, "device": device, "batch_tokens": batch_tokens,
               "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
               "keep_token_logprobs": keep_token_logprobs, "system_prompt": system_prompt,
               "explain": explain, "limit": limit, "plot": plot, "shard": shard}
    shared.options = options
    if html_page:
        shared.output = None  # the page is written by the body; no records go out

    def body(session: common.Session) -> None:
        check_backend_name(backend)
        if backend == "openai":
            raise UsageError("--backend openai cannot score: it has no teacher-forced log-probs",
                             hint="use --backend hf or vllm")
        scorer = _Scorer(model, distilled, backend=backend, dtype=dtype, device=device,
                         batch_tokens=batch_tokens, gpu_memory_utilization=gpu_memory_utilization,
                         max_model_len=max_model_len, beta=beta, alpha=alpha,
                         keep_token_logprobs=keep_token_logprobs, system_prompt=system_prompt)
        shown: list[dict[str, Any]] = []
        points: list[tuple[Any, Any, Any]] = []
        session.tally.extra.update({"sentences": 0, "teacher_sentences": 0, "merged_sentences": 0})
        try:
            # Showing only (no records out, no plot): read no more than what is shown.
            stop_after = limit if show_only and not plot else None
            for record in scorer.run(session, _windows(session, stop_after, common.parse_shard(shard))):
                das = record["das"]
                session.tally.extra["sentences"] += len(das["sentences"])
                session.tally.extra["teacher_sentences"] += das["score"]
                if plot:
                    points.append(((record.get("teacher") or {}).get("temperature"),
                                   das.get("p_teacher"), das.get("p_student")))
                if explain and len(shown) < limit:
                    shown.append(record)
                    if not html_page:
                        from dasd_cli.report.explain import terminal_view

                        io.say(terminal_view(record, len(shown) - 1, color=io.stderr_is_terminal()).rstrip("\n"))
                if show_only:
                    session.tally.keep()
                else:
                    session.emit(record)
        finally:
            scorer.close()
        session.tally.extra["merged_sentences"] += scorer.merged
        if explain:
            from dasd_cli.report.explain import html_page as render_html
            from dasd_cli.report.explain import terminal_summary

            if html_page:
                io.write_text_atomic(output, render_html(shown))
            else:
                io.say(terminal_summary(shown).rstrip("\n"))
        if plot:
            from dasd_cli.report.plot import plot_histograms

            plot_histograms(points, plot)

    common.run_command("score", shared, body, writes_records=not show_only)


def _windows(session: common.Session, stop_after: int | None = None,
             shard: tuple[int, int] | None = None) -> Iterator[list[io.Line]]:
    window: list[io.Line] = []
    for line in itertools.islice(session.records(shard=shard), stop_after):
        window.append(line)
        if len(window) >= WINDOW:
            yield window
            window = []
    if window:
        yield window


class _Scorer:
    """Loads the student (and distilled) model on first need; scores windows of records."""

    def __init__(self, model: str | None, distilled: str | None, **settings: Any) -> None:
        from dasd_cli.model.load import model_name

        self.specs = [model] + ([distilled] if distilled is not None else [])
        self.names = [model_name(spec) for spec in self.specs]
        self.settings = settings
        self.backends: list[Any] = []
        self.merged = 0

    def _backends(self) -> list[Any]:
        if not self.backends:
            self.backends = [_open_backend(spec, **self.settings) for spec in self.specs]
        return self.backends

    def _reusable(self, record: dict[str, Any]) -> bool:
        das = record.get("das")
        s = self.settings
        return (isinstance(das, dict) and das.get("student") == self.names[0] and das.get("beta") == s["beta"]
                and das.get("distilled") == (self.names[1] if len(self.names) > 1 else None)
                and (not s["keep_token_logprobs"] or "student_logprobs" in das))

    def run(self, session: common.Session, windows: Iterator[list[io.Line]]) -> Iterator[dict[str, Any]]:
        """Scored records of every window, in input order; bad records go to the session."""
        for window in windows:
            todo: dict[str, tuple[dict[str, Any], TokenLogprobs, int]] = {}
            requests = []
            ready: list[tuple[io.Line, dict[str, Any] | None]] = []
            for line in window:
                record = line.record
                if self._reusable(record):
                    ready.append((line, record))
                    continue
                try:
                    response = response_text(record)
                    teacher, start = teacher_tokens(record, response)
                    messages = prompt_messages(record, self.settings["system_prompt"])
                except RecordError as err:
                    session.bad_record(line, err)
                    continue
                key = str(len(requests))
                todo[key] = (record, teacher, start)
                requests.append(ScoreRequest(key, messages, response))
                ready.append((line, None))
            results = [dict() for _ in self.specs]
            if requests:
                for backend, into in zip(self._backends(), results):
                    for scored in backend.score(requests):
                        into[scored.key] = scored
            keys = iter(range(len(requests)))
            for line, record in ready:
                if record is None:
                    record = self._finish(todo, str(next(keys)), results)
                yield record

    def _finish(self, todo: dict[str, Any], key: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        record, teacher, start = todo[key]
        s = self.settings
        models = [TokenLogprobs(r[key].logprobs, r[key].offsets) for r in results]
        analysis = analyze(record["response"], teacher, models[0], beta=s["beta"], start=start,
                           distilled=models[1] if len(models) > 1 else None, alpha=s["alpha"])
        self.merged += analysis.merged
        das = das_record(analysis, student=self.names[0], beta=s["beta"],
                         distilled=self.names[1] if len(self.names) > 1 else None,
                         alpha=s["alpha"] if len(self.names) > 1 else None)
        if s["keep_token_logprobs"]:
            das["student_logprobs"] = [round(x, 5) for x in models[0].logprobs]
            das["student_offsets"] = list(models[0].offsets)
        record["das"] = das
        return record

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def _open_backend(spec: str | None, *, backend: str, dtype: str, device: str, batch_tokens: int,
                  gpu_memory_utilization: float, max_model_len: int | None, **_: Any) -> Any:
    if backend == "vllm":
        from dasd_cli.backends.vllm import VLLMBackend

        scorer = VLLMBackend(spec, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                             max_model_len=max_model_len)
        scorer.batch_tokens = batch_tokens
        return scorer
    from dasd_cli.backends.hf import HFBackend

    return HFBackend(spec, dtype=dtype, device=device, batch_tokens=batch_tokens)
