"""``dasd filter``: response quality control (METHOD.md section 4).

Keeps a response record or drops it with a reason code. Checks run cheapest first:
truncated, structure (tool calls, ``--require-think``), repetition, length
(``--cutoff-len``), correctness (``--verify``); the work is pipeline/filtering.py's.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli import io
from dasd_cli.commands import common
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.filtering import NORMALIZERS, FilterSettings, filter_records


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
    settings = FilterSettings(
        truncated=truncated, only_truncated=only_truncated, require_think=require_think,
        drop_tool_calls=drop_tool_calls, tool_call_pattern=tool_call_pattern, normalize=normalize,
        repetition=repetition, repetition_threshold=repetition_threshold, verify=verify,
        math_timeout=math_timeout, cutoff_len=cutoff_len if cutoff_len is not None else max_tokens,
        tokenizer=tokenizer, system_prompt=system_prompt, workers=workers)

    def body(session: common.Session) -> None:
        if max_tokens is not None and settings.cutoff_len != max_tokens:
            raise UsageError(f"--cutoff-len {cutoff_len} and --max-tokens {max_tokens} disagree",
                             hint="give --cutoff-len only (--max-tokens is its old name)")
        filter_records(session, settings, quiet=shared.quiet)

    common.run_command("filter", shared, body, settings=settings)
