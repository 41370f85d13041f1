"""``dasd filter``: response quality control (METHOD.md section 4).

Keeps a response record or drops it with a reason code. Checks run cheapest first:
truncated, structure (tool calls, ``--require-think``), length (``--max-tokens``).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.core.filters import Filter, first_drop
from dasd_cli.core.filters.harmony import normalize_harmony
from dasd_cli.core.filters.structure import DEFAULT_TOOL_CALL_PATTERNS, StructureFilter
from dasd_cli.core.filters.truncated import TruncatedFilter
from dasd_cli.errors import RecordError, UsageError

NORMALIZERS = ("none", "harmony")


def filter_command(
    inputs: common.Inputs = None,
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
    normalize: Annotated[str, typer.Option(
        "--normalize", metavar="none|harmony",
        help="Rewrite the response before the checks: 'harmony' turns gpt-oss analysis/final "
        "channels into <think>...</think> + answer, carrying log-probs along.")] = "none",
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", min=1,
        help="Drop samples whose full training sequence (chat template + response) is longer "
        "than N tokens of --tokenizer. Never truncates.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="The STUDENT tokenizer for --max-tokens: a model folder or .gguf file "
        "(default: the embedded default model).", show_default=False)] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", metavar="TEXT",
        help="System turn added where a record has none, when counting tokens (use the same "
        "value as `dasd pack`).", show_default=False)] = None,
    output: common.Output = None,
    compress: common.Compress = "auto",
    rejects: common.Rejects = None,
    on_error: common.OnError = "fail",
    stats: common.Stats = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Keep or drop teacher responses: truncated, structure, length, repetition, correctness.

    Each dropped record is counted by reason and, with --rejects, written there with a
    'rejected' object. Records keep their input order.
    """
    options = {"truncated": truncated, "only_truncated": only_truncated, "require_think": require_think,
               "drop_tool_calls": drop_tool_calls, "tool_call_pattern": tool_call_pattern,
               "normalize": normalize, "max_tokens": max_tokens, "tokenizer": tokenizer,
               "system_prompt": system_prompt}
    shared = common.Common(inputs=inputs, output=output, compress=compress, quiet=quiet,
                           stats=stats, rejects=rejects, on_error=on_error, debug=debug,
                           options=options)

    def body(session: common.Session) -> None:
        filters = build_filters(truncated=truncated, only_truncated=only_truncated,
                                require_think=require_think,
                                drop_tool_calls=drop_tool_calls,
                                tool_call_pattern=tool_call_pattern, max_tokens=max_tokens,
                                tokenizer=tokenizer, system_prompt=system_prompt)
        if normalize not in NORMALIZERS:
            raise UsageError(f"--normalize must be one of {', '.join(NORMALIZERS)}, not {normalize!r}")
        for line in session.records():
            record = line.record
            try:
                if normalize == "harmony":
                    record = normalize_harmony(record)
                verdict = first_drop(filters, record)
            except RecordError as err:
                session.bad_record(line, err)
                continue
            if verdict is None:
                session.emit(record)
            else:
                by, drop = verdict
                session.drop(record, by, drop.reason, drop.detail)

    common.run_command("filter", shared, body)


def build_filters(*, truncated: bool, only_truncated: bool, require_think: bool, drop_tool_calls: bool,
                  tool_call_pattern: list[str] | None, max_tokens: int | None,
                  tokenizer: str | None, system_prompt: str | None) -> list[Filter]:
    """The enabled filters, cheapest first."""
    filters: list[Filter] = []
    if only_truncated:
        filters.append(TruncatedFilter(invert=True))
    elif truncated:
        filters.append(TruncatedFilter())
    patterns = tuple(tool_call_pattern) if tool_call_pattern else DEFAULT_TOOL_CALL_PATTERNS
    filters.append(StructureFilter(require_think=require_think,
                                   tool_call_patterns=patterns if drop_tool_calls else ()))
    if max_tokens is not None:
        from dasd_cli.backends.models import load_tokenizer
        from dasd_cli.core.filters.length import LengthFilter

        filters.append(LengthFilter(load_tokenizer(tokenizer), max_tokens, system_prompt))
    elif tokenizer is not None:
        raise UsageError("--tokenizer is only used with --max-tokens", hint="add --max-tokens N")
    return filters
