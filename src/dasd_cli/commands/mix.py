"""``dasd mix``: dedupe, select per prompt, fill exact quotas, shuffle.

Its FILE[:COUNT] arguments and flags go to pipeline/mixing.py, which parses them,
spills every record to disk, mixes the records with :class:`dasd_cli.core.mix.Mixer`
and writes what it keeps.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.core.mix import SELECT_CHOICES
from dasd_cli.errors import UsageError
from dasd_cli.pipeline.mixing import MixSettings, mix_records


MixInputs = Annotated[Optional[list[str]], typer.Argument(
    help="Input record files, each optionally FILE:COUNT to take exactly COUNT records "
    "from it. None or '-' reads stdin.", show_default=False, metavar="[FILE[:COUNT]]...")]


@common.shared_options(inputs=MixInputs, seed=True)
def mix_command(
    shared: common.Common,
    quota: Annotated[Optional[list[str]], typer.Option(
        "--quota", metavar="DOMAIN=COUNT",
        help="Take exactly COUNT records whose 'domain' is DOMAIN (missing: other) from the "
        "inputs without a COUNT; other domains are dropped (repeatable).",
        show_default=False)] = None,
    select: Annotated[Optional[common.choice(*SELECT_CHOICES)], typer.Option(
        "--select", metavar="|".join(SELECT_CHOICES),
        help="Keep --per-prompt candidates per prompt_id: 'das' the highest das.score (ties: "
        "higher das.p_teacher, then smaller id), 'random' a seeded sample.",
        show_default=False)] = None,
    per_prompt: Annotated[Optional[int], typer.Option(
        "--per-prompt", metavar="K", min=1,
        help="Candidates kept per prompt by --select [default: 1].", show_default=False)] = None,
    allow_short: Annotated[bool, typer.Option(
        "--allow-short", help="When a count cannot be met, keep what there is and report the "
        "shortfall instead of failing.")] = False,
    keep_order: Annotated[bool, typer.Option(
        "--keep-order", help="Write kept records in input order instead of shuffled.")] = False,
) -> None:
    """Mix response records: dedupe, select per prompt, exact quotas, seeded shuffle.

    Reads all input first (quotas and the shuffle need every record), keeping record
    bodies in a compressed temporary file in $TMPDIR (about the size of the compressed
    input) and only small per-record metadata in memory. Dropped records are counted by
    reason (duplicate_id, duplicate_content, not_selected, over_quota, no_quota) and, with
    --rejects, written there.
    """
    settings = MixSettings(inputs=shared.inputs, quota=quota, select=select, per_prompt=per_prompt,
                           allow_short=allow_short, keep_order=keep_order)

    def body(session: common.Session) -> None:
        if per_prompt is not None and select is None:
            raise UsageError("--per-prompt needs --select", hint="add --select das or --select random")
        mix_records(session, settings, seed=shared.seed)

    common.run_command("mix", shared, body, settings=settings)
