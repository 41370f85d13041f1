"""``dasd filter``: response quality control (METHOD.md section 4).

Keeps a response record or drops it with a reason code. Checks run cheapest first:
truncated, structure (tool calls, ``--require-think``), repetition, length
(``--cutoff-len``), correctness (``--verify``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Optional, Union

import typer

from dasd_cli import io
from dasd_cli.commands import common
from dasd_cli.core.drop import Drop
from dasd_cli.core.filters import Filter, first_drop
from dasd_cli.core.filters.harmony import normalize_harmony
from dasd_cli.core.filters.structure import DEFAULT_TOOL_CALL_PATTERNS, StructureFilter
from dasd_cli.core.filters.truncated import TruncatedFilter
from dasd_cli.core.filters.verify import VerifyFilter
from dasd_cli.errors import RecordError, UsageError

if TYPE_CHECKING:
    from dasd_cli.core.filters.repetition import RepetitionConfig

NORMALIZERS = ("none", "harmony")


@common.shared_options()
def filter_command(
    shared: common.Common,
    truncated: Annotated[bool, typer.Option(
        "--truncated/--keep-truncated",
        help="Drop responses the teacher did not finish (finish_reason 'length').")] = True,
    only_truncated: Annotated[bool, typer.Option(
        "--only-truncated",
        help="Keep only responses that hit their token cap (finish_reason 'length'), e.g. the "
        "student answers that mixed-policy distillation hands to the teacher. Implies "
        "--keep-truncated.")] = False,
    require_think: Annotated[bool, typer.Option(
        "--require-think", help="Require a non-empty <think>...</think> followed by a non-empty answer.")] = False,
    drop_tool_calls: Annotated[bool, typer.Option(
        "--drop-tool-calls/--keep-tool-calls",
        help="Drop responses containing a tool or function call.")] = True,
    tool_call_pattern: Annotated[Optional[list[str]], typer.Option(
        "--tool-call-pattern", metavar="REGEX",
        help="A regular expression marking a tool call (repeatable; replaces the built-in "
        "harmony, <tool_call> and <function=...> patterns).", show_default=False)] = None,
    normalize: Annotated[common.choice(*NORMALIZERS), typer.Option(
        "--normalize", metavar="|".join(NORMALIZERS),
        help="Rewrite the response before the checks: 'harmony' turns gpt-oss analysis/final "
        "channels into <think>...</think> + answer, carrying log-probs along.")] = "none",
    repetition: Annotated[bool, typer.Option(
        "--repetition/--no-repetition",
        help="Drop responses with repeated lines, paragraphs or n-grams, or a looping ending "
        "(thresholds calibrated for long chain-of-thought; see DESCRIPTION).")] = True,
    repetition_threshold: Annotated[Optional[list[str]], typer.Option(
        "--repetition-threshold", metavar="NAME=VALUE",
        help="Override one repetition threshold (repeatable), e.g. "
        "max_duplicate_5gram_fraction=0.4; the names are listed in DESCRIPTION.",
        show_default=False)] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check the final answer against the record's 'reference': math "
        "equivalence, multiple-choice letter, or code unit tests run in a sandbox. Records "
        "without a reference are kept and counted as unverified.")] = False,
    math_timeout: common.MathTimeout = common.DEFAULT_MATH_TIMEOUT,
    cutoff_len: Annotated[Optional[int], typer.Option(
        "--cutoff-len", metavar="L", min=1,
        help="Drop samples whose full training sequence (chat template + response) is longer "
        "than L tokens of --tokenizer (the same L as `dasd pack --cutoff-len`). Never "
        "truncates.", show_default=False)] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", min=1, hidden=True,
        help="Deprecated name of --cutoff-len.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="The STUDENT tokenizer for --cutoff-len: a model or tokenizer folder, or a .gguf file "
        "(default: the embedded default model).", show_default=False)] = None,
    system_prompt: common.SystemPrompt = None,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", min=0,
        help="Check N records at a time in threads (0: one per core; 1: in the main thread). "
        "The repetition statistics run outside the interpreter lock, code tests in the "
        "sandbox and math comparisons in a helper process per thread, so the checks use "
        "every core. Records keep their input order.")] = 0,
) -> None:
    """Keep or drop teacher responses: truncated, structure, length, repetition, correctness.

    Each dropped record is counted by reason and, with --rejects, written there with a
    'rejected' object. Records keep their input order.
    """
    if max_tokens is not None:
        io.say("dasd filter: warning: --max-tokens is deprecated; use --cutoff-len (the same "
               "training-sequence cap as dasd pack's)")
    limit = cutoff_len if cutoff_len is not None else max_tokens
    shared.options = {"truncated": truncated, "only_truncated": only_truncated,
                      "require_think": require_think, "drop_tool_calls": drop_tool_calls,
                      "tool_call_pattern": tool_call_pattern, "normalize": normalize,
                      "repetition": repetition, "repetition_threshold": repetition_threshold,
                      "verify": verify, "math_timeout": math_timeout, "cutoff_len": limit,
                      "tokenizer": tokenizer, "system_prompt": system_prompt, "workers": workers}

    def body(session: common.Session) -> None:
        if max_tokens is not None and limit != max_tokens:
            raise UsageError(f"--cutoff-len {cutoff_len} and --max-tokens {max_tokens} disagree",
                             hint="give --cutoff-len only (--max-tokens is its old name)")
        filters = build_filters(truncated=truncated, only_truncated=only_truncated,
                                require_think=require_think,
                                drop_tool_calls=drop_tool_calls,
                                tool_call_pattern=tool_call_pattern, repetition=repetition,
                                repetition_threshold=repetition_threshold, verify=verify,
                                math_timeout=math_timeout, cutoff_len=limit,
                                tokenizer=tokenizer, system_prompt=system_prompt)
        verifier = next((f for f in filters if isinstance(f, VerifyFilter)), None)
        if verifier is not None and not shared.quiet:
            from dasd_cli.sandbox import isolation

            io.say(f"dasd filter: {isolation().describe()}")
        from dasd_cli.workers import batched, default_workers, ordered_thread_map

        def judge(chunk: list[io.Line]) -> list[tuple[dict, Verdict]]:
            return [check_record(line.record, filters, normalize) for line in chunk]

        # Verification takes milliseconds to seconds a record: one record a task then.
        size = 1 if verifier is not None else CHUNK_RECORDS
        handed = decided = 0

        def records() -> Iterator[io.Line]:
            nonlocal handed
            for line in session.records():
                handed += 1
                yield line

        try:
            for chunk, results in ordered_thread_map(judge, batched(records(), size),
                                                     workers=workers or default_workers()):
                for line, (record, verdict) in zip(chunk, results):
                    if isinstance(verdict, RecordError):
                        session.bad_record(line, verdict)
                    elif verdict is None:
                        session.emit(record)
                    else:
                        by, drop = verdict
                        session.drop(record, by, drop.reason, drop.detail)
                    decided += 1
        finally:
            # Stopped early (Ctrl-C): records read ahead for the threads were not decided, so
            # they do not count as read (read = kept + dropped + skipped still holds).
            session.tally.read -= handed - decided
        if verifier is not None:
            session.tally.extra["verified"] = verifier.verified
            session.tally.extra["unverified"] = verifier.unverified

    common.run_command("filter", shared, body)


CHUNK_RECORDS = 16  # records a thread checks per task (fewer tasks, less overhead)
Verdict = Union[tuple[str, Drop], RecordError, None]


def check_record(record: dict, filters: list[Filter], normalize: str) -> tuple[dict, Verdict]:
    """(the record, normalized if asked; the first drop, None, or the RecordError)."""
    try:
        if normalize == "harmony":
            record = normalize_harmony(record)
        return record, first_drop(filters, record)
    except RecordError as err:
        return record, err


def build_filters(*, truncated: bool, only_truncated: bool, require_think: bool, drop_tool_calls: bool,
                  tool_call_pattern: list[str] | None, repetition: bool,
                  repetition_threshold: list[str] | None, verify: bool, math_timeout: int,
                  cutoff_len: int | None, tokenizer: str | None,
                  system_prompt: str | None) -> list[Filter]:
    """The enabled filters, cheapest first."""
    filters: list[Filter] = []
    if only_truncated:
        filters.append(TruncatedFilter(invert=True))
    elif truncated:
        filters.append(TruncatedFilter())
    patterns = tuple(tool_call_pattern) if tool_call_pattern else DEFAULT_TOOL_CALL_PATTERNS
    filters.append(StructureFilter(require_think=require_think,
                                   tool_call_patterns=patterns if drop_tool_calls else ()))
    if repetition:
        from dasd_cli.core.filters.repetition import RepetitionFilter  # numpy: load on use

        filters.append(RepetitionFilter(repetition_config(repetition_threshold or [])))
    elif repetition_threshold:
        raise UsageError("--repetition-threshold needs --repetition")
    if cutoff_len is not None:
        from dasd_cli.model.load import load_tokenizer
        from dasd_cli.core.filters.length import LengthFilter

        filters.append(LengthFilter(load_tokenizer(tokenizer), cutoff_len, system_prompt))
    elif tokenizer is not None:
        raise UsageError("--tokenizer is only used with --cutoff-len", hint="add --cutoff-len L")
    if verify:
        from dasd_cli.pipeline.verification import compare_in_helper, run_program

        filters.append(VerifyFilter(run_program=run_program, math_timeout_s=math_timeout,
                                    compare_math=compare_in_helper))
    return filters


def repetition_config(overrides: list[str]) -> RepetitionConfig:
    """RepetitionConfig with NAME=VALUE overrides from the command line."""
    from dasd_cli.core.filters.repetition import RepetitionConfig, config_fields

    known = config_fields()
    values: dict[str, float | int] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise UsageError(f"--repetition-threshold {item!r}: expected NAME=VALUE with NAME one of "
                             + ", ".join(known))
        default = getattr(RepetitionConfig, name)
        try:
            values[name] = type(default)(text)
        except ValueError:
            raise UsageError(f"--repetition-threshold {item!r}: {text!r} is not a number") from None
    try:
        return replace(RepetitionConfig(), **values)
    except ValueError as err:
        raise UsageError(f"--repetition-threshold: {err}") from None
