"""``dasd filter``'s record work: each response kept or dropped with a reason code.

:func:`filter_records` runs the enabled filters (core.filters, cheapest first) over the
session's records in worker threads and keeps or drops each one in input order. The
verifier runs code tests in the sandbox and math comparisons in a helper process per
thread (pipeline.verification), so the checks use every core.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, Union

from dasd_cli import io
from dasd_cli.core.drop import Drop
from dasd_cli.core.filters import Filter, first_drop
from dasd_cli.core.filters.harmony import normalize_harmony
from dasd_cli.core.filters.structure import DEFAULT_TOOL_CALL_PATTERNS, StructureFilter
from dasd_cli.core.filters.truncated import TruncatedFilter
from dasd_cli.core.filters.verify import VerifyFilter
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError, UsageError
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.workers import batched, default_workers

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dasd_cli.core.filters.repetition import RepetitionConfig

NORMALIZERS = ("none", "harmony")
CHUNK_RECORDS = 16  # records a thread checks per task (fewer tasks, less overhead)
Verdict = Union[tuple[str, Drop], RecordError, None]


@dataclass
class FilterSettings:
    """What ``dasd filter`` checks: its flags, every one given (the command builds it)."""

    truncated: bool  # drop finish_reason 'length'
    only_truncated: bool  # keep only finish_reason 'length' (implies not truncated)
    require_think: bool  # a non-empty <think>...</think> and a non-empty answer
    drop_tool_calls: bool
    tool_call_pattern: list[str] | None  # regexes replacing the built-in tool-call patterns
    normalize: str  # one of NORMALIZERS, applied before the checks
    repetition: bool
    repetition_threshold: list[str] | None  # NAME=VALUE overrides of RepetitionConfig
    verify: bool  # check final answers against each record's reference
    math_timeout: int  # seconds per math comparison
    cutoff_len: int | None  # training-sequence cap in tokenizer tokens (None: no length check)
    tokenizer: str | None  # the student tokenizer of cutoff_len (None: the embedded default)
    system_prompt: str | None  # added to records without a system turn, for cutoff_len
    workers: int  # threads (0: one per core; 1: the main thread)


class FilterSession(Protocol):
    """What :func:`filter_records` needs of a command's session."""

    tally: Tally

    def records(self) -> Iterator[io.Line]: ...

    def emit(self, record: dict[str, Any]) -> None: ...

    def drop(self, line: dict[str, Any], by: str, reason: str, detail: str = "") -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def filter_records(session: FilterSession, settings: FilterSettings, *, quiet: bool = False) -> None:
    """Keep or drop every record of ``session``, in input order; with ``verify``, count
    ``verified`` and ``unverified`` (and say how code is isolated unless ``quiet``)."""
    filters = build_filters(settings)
    verifier = next((f for f in filters if isinstance(f, VerifyFilter)), None)
    if verifier is not None and not quiet:
        from dasd_cli.sandbox import isolation

        io.say(f"dasd filter: {isolation().describe()}")

    def judge(chunk: list[io.Line]) -> list[tuple[dict[str, Any], Verdict]]:
        return [check_record(line.record, filters, settings.normalize) for line in chunk]

    def settle(line: io.Line, checked: tuple[dict[str, Any], Verdict]) -> None:
        record, verdict = checked
        if isinstance(verdict, RecordError):
            session.bad_record(line, verdict)
        elif verdict is None:
            session.emit(record)
        else:
            by, drop = verdict
            session.drop(record, by, drop.reason, drop.detail)

    # Verification takes milliseconds to seconds a record: one record a task then.
    size = 1 if verifier is not None else CHUNK_RECORDS
    record_loop(session.tally, batched(session.records(), size), settle, judge,
                workers=settings.workers or default_workers())
    if verifier is not None:
        session.tally.extra["verified"] = verifier.verified
        session.tally.extra["unverified"] = verifier.unverified


def check_record(record: dict[str, Any], filters: list[Filter], normalize: str
                 ) -> tuple[dict[str, Any], Verdict]:
    """(the record, normalized if asked; the first drop, None, or the RecordError)."""
    try:
        if normalize == "harmony":
            record = normalize_harmony(record)
        return record, first_drop(filters, record)
    except RecordError as err:
        return record, err


def build_filters(settings: FilterSettings) -> list[Filter]:
    """The enabled filters, cheapest first."""
    s = settings
    filters: list[Filter] = []
    if s.only_truncated:
        filters.append(TruncatedFilter(invert=True))
    elif s.truncated:
        filters.append(TruncatedFilter())
    patterns = tuple(s.tool_call_pattern) if s.tool_call_pattern else DEFAULT_TOOL_CALL_PATTERNS
    filters.append(StructureFilter(require_think=s.require_think,
                                   tool_call_patterns=patterns if s.drop_tool_calls else ()))
    if s.repetition:
        from dasd_cli.core.filters.repetition import RepetitionFilter  # numpy: load on use

        filters.append(RepetitionFilter(repetition_config(s.repetition_threshold or [])))
    elif s.repetition_threshold:
        raise UsageError("--repetition-threshold needs --repetition")
    if s.cutoff_len is not None:
        from dasd_cli.core.filters.length import LengthFilter
        from dasd_cli.model.load import load_tokenizer

        filters.append(LengthFilter(load_tokenizer(s.tokenizer), s.cutoff_len, s.system_prompt))
    elif s.tokenizer is not None:
        raise UsageError("--tokenizer is only used with --cutoff-len", hint="add --cutoff-len L")
    if s.verify:
        from dasd_cli.pipeline.verification import compare_in_helper, run_program

        filters.append(VerifyFilter(run_program=run_program, math_timeout_s=s.math_timeout,
                                    compare_math=compare_in_helper))
    return filters


def repetition_config(overrides: list[str]) -> RepetitionConfig:
    """RepetitionConfig with NAME=VALUE overrides from the command line."""
    from dasd_cli.core.filters.repetition import RepetitionConfig, config_fields

    known = config_fields()
    values: dict[str, Any] = {}  # each field's own type: int or float
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
