"""``dasd eval``: accuracy of sampled responses against their references.

Checks every response record with the verifiers of ``dasd filter --verify``, writes it
with an ``eval`` object (DESIGN.md "Eval"), and ends with a table per group (``domain`` or
``--by FIELD``) and overall: avg@n, its standard error and 95% interval across prompts,
unbiased pass@k, maj@k, truncation rate (cap hits) with its 95% interval and mean
response tokens (definitions: :mod:`dasd_cli.core.evaluate`).
``--compare OTHER`` adds the paired difference in avg@n with a bootstrap interval.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.evaluating import EvalSettings, evaluate_records
from dasd_cli.report.evaluation import FORMATS

DEFAULT_RESAMPLES = 10000


@common.shared_options(seed=True)
def eval_command(
    shared: common.Common,
    by: Annotated[str, typer.Option(
        "--by", metavar="FIELD",
        help="Group the table by this record field, a dotted path such as sampler.model "
        "(teacher.X reads sampler.X of records without a teacher block, and sampler.X the "
        "teacher block of files of earlier versions; missing: 'other' for domain, "
        "'(missing)' otherwise).")] = "domain",
    compare_with: Annotated[Optional[str], typer.Option(
        "--compare", metavar="OTHER",
        help="Another evaluation of the same prompts (records with 'eval', or samples to "
        "verify): report this run's avg@n minus OTHER's, paired by prompt, with a "
        "bootstrap 95 percent interval.", show_default=False)] = None,
    resamples: Annotated[int, typer.Option(
        "--resamples", metavar="B", min=1,
        help="Bootstrap resamples of the 95 percent intervals (avg@n, truncation, --compare).")] = DEFAULT_RESAMPLES,
    report: Annotated[common.choice(*FORMATS), typer.Option(
        "--report", metavar="table|md|none",
        help="The metrics table: 'table' (rich on a terminal, plain text otherwise), "
        "'md' (markdown) or 'none'.")] = "table",
    report_file: Annotated[Optional[str], typer.Option(
        "--report-file", metavar="PATH",
        help="Write the table to PATH instead of stderr.", show_default=False)] = None,
    math_timeout: common.MathTimeout = common.DEFAULT_MATH_TIMEOUT,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, metavar="N",
        help="Verify N records at a time in threads (code tests in the sandbox wait on "
        "processes; 1 verifies in the main thread).")] = 1,
) -> None:
    """Score sampled responses against their references: avg@n, pass@k, maj@k, per group.

    Each record is written with an 'eval' object {correct, reason, answer}; records
    without a 'reference' pass through unchanged and are counted as unverified. The
    table goes to stderr (or --report-file), every number to --stats.
    """
    settings = EvalSettings(by=by, compare=compare_with, resamples=resamples, report=report,
                            report_file=report_file, math_timeout=math_timeout, workers=workers)

    def body(session: common.Session) -> None:
        if report_file is not None and report == "none":
            raise UsageError("--report-file needs a table", hint="use --report table or --report md")
        if compare_with == "-":
            raise UsageError("--compare needs a file, not stdin")
        if compare_with is not None and not os.path.exists(compare_with):
            raise UsageError(f"--compare {compare_with}: no such file")  # before the long part
        evaluate_records(session, settings, seed=shared.seed, quiet=shared.quiet)

    common.run_command("eval", shared, body, settings=settings)
