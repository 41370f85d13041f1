"""``dasd mix``: dedupe, select per prompt, fill exact quotas, shuffle.

Parses FILE[:COUNT] arguments and --quota flags, feeds every record to
:class:`dasd_cli.core.mix.Mixer` and writes what it keeps. Mix reads all of its input
before writing anything (quotas and the shuffle need every record), so it runs in two
passes: the first spills each record, compressed, to a temporary file in ``$TMPDIR`` and
hands the mixer only a handle to it; the second reads the chosen records back in output
order. Memory holds per-record metadata, not bodies (DESIGN.md "Scale").
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import orjson
import typer

from dasd_cli.commands import common
from dasd_cli.core.mix import SELECT_CHOICES, Mixer
from dasd_cli.errors import RecordError, UsageError
from dasd_cli.store import RecordSpill


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
    shared.options = {"inputs": shared.inputs, "quota": quota, "select": select,
                      "per_prompt": per_prompt, "allow_short": allow_short, "keep_order": keep_order}

    def body(session: common.Session) -> None:
        specs = [parse_input(arg) for arg in (shared.inputs or ["-"])]
        quotas = parse_quotas(quota or [])
        if quotas and all(count is not None for _, count in specs):
            raise UsageError("--quota applies to inputs without a COUNT, and every input has one",
                             hint="drop the :COUNT of the inputs the domain quotas should draw from")
        if per_prompt is not None and select is None:
            raise UsageError("--per-prompt needs --select", hint="add --select das or --select random")
        mixer = Mixer(inputs=specs, quotas=quotas, select=select, per_prompt=per_prompt or 1,
                      seed=shared.seed, keep_order=keep_order, allow_short=allow_short)
        with RecordSpill() as spill:
            def drop(handle: int, reason: str, detail: str, record: dict | None = None) -> None:
                """Count a drop; --rejects gets the record, read back from the spill if needed."""
                if session.rejects is not None and record is None:
                    record = orjson.loads(spill.get(handle))
                session.drop(record or {}, "mix", reason, detail)

            for source, (path, _count) in enumerate(specs):
                for line in session.records([path]):
                    handle = spill.put(orjson.dumps(line.record, option=orjson.OPT_SERIALIZE_NUMPY))
                    try:
                        dropped = mixer.add(line.record, source, handle)
                    except RecordError as err:
                        session.bad_record(line, err)
                        continue
                    if dropped is not None:  # this record, or an earlier one it displaced
                        drop(dropped.record, dropped.reason, dropped.detail,
                             line.record if dropped.record == handle else None)
            kept, drops, pools = mixer.finish()
            for dropped in drops:
                drop(dropped.record, dropped.reason, dropped.detail)
            assert session.writer is not None
            for handle in kept:
                session.writer.write_line(spill.get(handle))
                session.tally.keep()
            session.tally.extra["spill_bytes"] = spill.bytes_on_disk
        short = sum(pool.short for pool in pools)
        if short:
            session.tally.extra["short"] = short
        session.tally.extra["quotas"] = {
            pool.name: {"target": pool.target, "available": pool.available, "kept": pool.kept,
                        "short": pool.short} for pool in pools}

    common.run_command("mix", shared, body)


def parse_input(arg: str) -> tuple[str, int | None]:
    """``FILE[:COUNT]`` into (FILE, COUNT).

    A path may itself contain ':', so COUNT is read only when the text after the last
    ':' is a whole number and the whole argument is not an existing file.
    """
    if arg == "-" or os.path.exists(arg) or ":" not in arg:
        return arg, None
    path, tail = arg.rsplit(":", 1)
    if path and tail.isascii() and tail.isdigit():
        return path, int(tail)
    return arg, None


def parse_quotas(values: list[str]) -> dict[str, int]:
    """``--quota DOMAIN=COUNT`` flags into {domain: count}."""
    quotas: dict[str, int] = {}
    for value in values:
        domain, sep, count = value.rpartition("=")
        if not sep or not domain or not (count.isascii() and count.isdigit()):
            raise UsageError(f"--quota must look like DOMAIN=COUNT (e.g. math=5000), not {value!r}")
        if domain in quotas:
            raise UsageError(f"--quota {domain} given twice")
        quotas[domain] = int(count)
    return quotas
