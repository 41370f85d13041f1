"""``dasd mix``'s record work: every record spilled to disk, mixed, the chosen ones written.

Mix reads all of its input before writing anything (quotas and the shuffle need every
record), so it runs in two passes: the first spills each record, compressed, to a
temporary file in ``$TMPDIR`` and hands :class:`dasd_cli.core.mix.Mixer` only a handle
to it; the second reads the chosen records back in output order. Memory holds
per-record metadata, not bodies (DESIGN.md "Scale").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from dasd_cli import io
from dasd_cli.core.mix import Mixer, Quota
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError, UsageError
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.store import RecordSpill


@dataclass
class MixSettings:
    """What ``dasd mix`` keeps: its arguments and flags, every one given (the command builds it)."""

    inputs: list[str] | None  # FILE[:COUNT] arguments (None: stdin)
    quota: list[str] | None  # DOMAIN=COUNT flags
    select: str | None  # das | random: keep per_prompt candidates per prompt_id
    per_prompt: int | None  # candidates kept per prompt by select (None: 1)
    allow_short: bool  # a count that cannot be met keeps what there is instead of failing
    keep_order: bool  # input order instead of the seeded shuffle


class MixSession(Protocol):
    """What :func:`mix_records` needs of a command's session."""

    tally: Tally
    writer: io.RecordWriter | None
    rejects: io.RecordWriter | None

    def records(self, inputs: list[str] | None = None) -> Iterator[io.Line]: ...

    def drop(self, line: dict[str, Any], by: str, reason: str, detail: str = "") -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def mix_records(session: MixSession, settings: MixSettings, *, seed: int) -> None:
    """Mix every record of the inputs and write the kept ones (``seed``: selection,
    quotas and shuffle); counts ``spill_bytes``, ``quotas`` and any ``short``."""
    s = settings
    specs = [parse_input(arg) for arg in (s.inputs or ["-"])]
    quotas = parse_quotas(s.quota or [])
    if quotas and all(count is not None for _, count in specs):
        raise UsageError("--quota applies to inputs without a COUNT, and every input has one",
                         hint="drop the :COUNT of the inputs the domain quotas should draw from")
    # The mixer holds a handle into the spill (an int) per record, never the record.
    mixer: Mixer[int] = Mixer(inputs=specs, quotas=quotas, select=s.select,
                              per_prompt=s.per_prompt or 1, seed=seed, keep_order=s.keep_order,
                              allow_short=s.allow_short)
    pools: list[Quota] = []
    with RecordSpill() as spill:
        def drop(handle: int, reason: str, detail: str, record: dict[str, Any] | None = None) -> None:
            """Count a drop; --rejects gets the record, read back from the spill if needed."""
            if session.rejects is not None and record is None:
                record = orjson.loads(spill.get(handle))
            session.drop(record or {}, "mix", reason, detail)

        def spill_and_add(item: tuple[int, io.Line], _: None) -> None:
            source, line = item
            handle = spill.put(orjson.dumps(line.record, option=orjson.OPT_SERIALIZE_NUMPY))
            try:
                dropped = mixer.add(line.record, source, handle)
            except RecordError as err:
                session.bad_record(line, err)
                return
            if dropped is not None:  # this record, or an earlier one it displaced
                drop(dropped.record, dropped.reason, dropped.detail,
                     line.record if dropped.record == handle else None)

        def write_kept() -> None:
            kept, drops, finished = mixer.finish()
            pools.extend(finished)
            for dropped in drops:
                drop(dropped.record, dropped.reason, dropped.detail)
            assert session.writer is not None
            for handle in kept:
                session.writer.write_line(spill.get(handle))
                session.tally.keep()

        inputs = ([(source, line)] for source, (path, _count) in enumerate(specs)
                  for line in session.records([path]))
        record_loop(session.tally, inputs, spill_and_add, finish=write_kept)
        session.tally.extra["spill_bytes"] = spill.bytes_on_disk
    short = sum(pool.short for pool in pools)
    if short:
        session.tally.extra["short"] = short
    session.tally.extra["quotas"] = {
        pool.name: {"target": pool.target, "available": pool.available, "kept": pool.kept,
                    "short": pool.short} for pool in pools}


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
