"""``dasd score``: divergence-aware sampling scores (METHOD.md section 2), or a teacher's
scores of student samples for on-policy distillation (section 5, ``--role teacher``).

Adds a ``das`` object to each response record: sentences of the teacher's text with
p_T (from the record's sampler log-probs, the teacher's) and p_S (one teacher-forced
pass of the student), typed teacher / shared / student; ``das.score`` is the
teacher-sentence count. With ``--role teacher`` it adds ``teacher_scores`` instead.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer

from dasd_cli import io
from dasd_cli.backends.base import BACKENDS
from dasd_cli.commands import common
from dasd_cli.core.das import DEFAULT_ALPHA, DEFAULT_BETA
from dasd_cli.core.provenance import sampler_block
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.scoring import ScoreSettings, score_stream
from dasd_cli.pipeline.teacher_scoring import score_as_teacher


class AcceptedLogprobs(str, Enum):
    """--accept-logprobs (a repeatable choice: typer takes a list of an Enum, not of a Literal)."""

    processed = "processed"
    unknown = "unknown"


@common.shared_options(shard=True)
def score_command(
    shared: common.Common,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="PATH", help="The STUDENT (before distillation), or with --role teacher the "
        "TEACHER: a model folder or .gguf file (default: the embedded default model).",
        show_default=False)] = None,
    role: Annotated[common.choice("student", "teacher"), typer.Option(
        "--role", metavar="student|teacher",
        help="What --model is to the model that sampled the records. student: DAS (the records "
        "are the teacher's samples; adds das). teacher: on-policy distillation (the records are "
        "the student's samples at temperature 1; adds teacher_scores, the teacher's log-prob of "
        "every sampled token, and counts teacher tokens, aligned and misaligned records and the "
        "sampled reverse KL per token in the summary). The teacher must have the student's "
        "tokenizer: records sampled with another are errors (tokenizer_mismatch).")] = "student",
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
    enforce_eager: common.EnforceEager = False,
    keep_token_logprobs: Annotated[bool, typer.Option(
        "--keep-token-logprobs", help="Also store the student's per-token log-probs and offsets "
        "(das.student_logprobs, das.student_offsets).")] = False,
    accept_logprobs: Annotated[Optional[list[AcceptedLogprobs]], typer.Option(
        "--accept-logprobs", metavar="processed|unknown",
        help="Also score records whose sampler.logprobs_mode is this (repeat the flag for both): "
        "processed (after temperature/top-p) or unknown (not recorded, or a server that does not "
        "say). Their p_T is then the distribution the log-probs came from, not the raw (temperature 1) one DAS "
        "compares with p_S; without this flag such records are errors.", show_default=False)] = None,
    system_prompt: common.SystemPrompt = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show the first --limit records sentence by sentence on stdout: text "
        "tagged by type and a summary table (records then go only to -o PATH); with -o FILE.html, "
        "one self-contained HTML page instead. Without --model: the das each record holds.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Records shown by --explain.")] = 1,
    color: Annotated[common.choice("auto", "always", "never"), typer.Option(
        "--color", metavar="auto|always|never", help="Color --explain's view by sentence type (auto: "
        "when stdout is a terminal; always: also through a pipe, e.g. to less -R).")] = "auto",
    plot: Annotated[Optional[str], typer.Option(
        "--plot", metavar="FILE.png", help="Write histograms of response p_teacher per teacher "
        "temperature and of p_student (without --model: from the das each record holds).",
        show_default=False)] = None,
) -> None:
    """Score teacher responses by sentence against a student (DAS), or student ones by token.

    With --role teacher, the teacher scores every token of the student's own samples
    (on-policy distillation).

    Records that already carry a das object for the same student content, beta and
    distilled model (or teacher_scores of the same teacher content) are not scored
    again. --explain and --plot without --model show the das each record holds; with
    --model they score what has none for that model. Records keep their input order.
    """
    output, shard, quiet = shared.output, shared.shard, shared.quiet
    html_page = explain and output is not None and output.endswith((".html", ".htm"))
    # --explain writes its view to stdout, where the user looks (a pager, a terminal):
    # records then go only to an -o file.
    records_out = not explain or (output is not None and not html_page)
    scoring = model is not None or not (explain or plot)  # else: show what the file holds
    settings = ScoreSettings(model=model, distilled=distilled, beta=beta, alpha=alpha, backend=backend,
                             dtype=dtype, device=device, batch_tokens=batch_tokens,
                             gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                             enforce_eager=enforce_eager, keep_token_logprobs=keep_token_logprobs,
                             system_prompt=system_prompt,
                             accept_logprobs=frozenset(mode.value for mode in accept_logprobs or ()),
                             role=role, explain=explain, limit=limit, color=color, plot=plot, shard=shard)
    if not records_out:
        shared.output = None  # the view (or the HTML page) is what goes out; no records

    def body(session: common.Session) -> None:
        if backend == "openai":
            raise UsageError("--backend openai cannot score: it has no teacher-forced log-probs",
                             hint="use --backend hf or vllm")
        if role == "teacher" and (distilled is not None or explain or plot or keep_token_logprobs):
            raise UsageError("--role teacher writes teacher_scores; --distilled, --explain, --plot and "
                             "--keep-token-logprobs are DAS's (--role student)",
                             hint="teacher_scores always keeps the per-token log-probs")
        if role == "teacher":
            score_as_teacher(session, settings, shard=common.parse_shard(shard))
            return
        if distilled is not None and not scoring:
            raise UsageError("--distilled with --explain or --plot needs --model",
                             hint="without --model they show the das each record holds")
        view = ExplainView(limit, color=_use_color(color)) if explain else None
        points: list[tuple[Any, Any, Any]] = []

        def observe(record: dict[str, Any]) -> None:
            if plot:
                das = record["das"]
                points.append(((sampler_block(record) or {}).get("temperature"),
                               das.get("p_teacher"), das.get("p_student")))
            if view is not None:
                view.add(record, show=not html_page)

        score_stream(session, settings, stored_only=not scoring, write_records=records_out,
                     # nothing but the view (no records out, no plot): read no more than it shows
                     stop_after=limit if explain and not records_out and not plot else None,
                     shard=common.parse_shard(shard), observe=observe,
                     notify=io.say if (explain or plot) and not quiet else None)
        if view is not None:
            if html_page:
                io.write_text_atomic(output, view.html())
            else:
                view.finish()
        if plot:
            from dasd_cli.report.plot import plot_histograms

            plot_histograms(points, plot)

    common.run_command("score", shared, body, settings=settings, writes_records=records_out)


def _use_color(color: str) -> bool:
    return io.stdout_is_terminal() if color == "auto" else color == "always"


class ExplainView:
    """--explain's view of the first ``limit`` records: a legend, each record as it comes,
    on stdout, then the summary table; or, for an HTML page, kept for :meth:`html`."""

    def __init__(self, limit: int, *, color: bool) -> None:
        self.limit = limit
        self.color = color
        self.shown: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any], *, show: bool) -> None:
        if len(self.shown) >= self.limit:
            return
        self.shown.append(record)
        if show:
            from dasd_cli.report.explain import legend, terminal_view

            if len(self.shown) == 1:
                io.show(legend(record, color=self.color))
            io.show(terminal_view(record, len(self.shown) - 1, color=self.color))

    def finish(self) -> None:
        from dasd_cli.report.explain import terminal_summary

        io.show(terminal_summary(self.shown))

    def html(self) -> str:
        from dasd_cli.report.explain import html_page

        return html_page(self.shown)
