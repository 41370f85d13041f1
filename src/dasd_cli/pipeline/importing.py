"""``dasd import``'s record work: released rows in, response records out, log-probs joined.

Each data row (JSONL through io, Parquet through pyarrow batches) becomes a response
record (core.released). With a Logprob file, the row's ``uuid`` is looked up there, its
``token_ids`` are decoded with the gpt-oss tokenizer (model.tokens gives each token's
start in the decoded text), and the log-probs are laid over the response.
:func:`import_records` writes each record, or drops it with its reason, in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dasd_cli import io
from dasd_cli.core import released
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError
from dasd_cli.io.released import LogprobFile, is_parquet, iter_parquet
from dasd_cli.pipeline.loop import record_loop
from dasd_cli.workers import batched


@dataclass
class ImportSettings:
    """How ``dasd import`` reads the release: its flags, every one given (the command builds it)."""

    logprobs: str | None  # the companion ...-Logprob file, joined by uuid
    tokenizer: str | None  # gpt-oss's tokenizer, to decode the Logprob file's token_ids
    logprobs_mode: str  # sampler.logprobs_mode to record: unknown | raw | processed


class ImportSession(Protocol):
    """What :func:`import_records` needs of a command's session."""

    tally: Tally

    def records(self, inputs: list[str] | None = None) -> Iterator[io.Line]: ...

    def emit(self, record: dict[str, Any]) -> None: ...

    def drop(self, line: dict[str, Any], by: str, reason: str, detail: str = "") -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def import_records(session: ImportSession, settings: ImportSettings, paths: list[str] | None) -> None:
    """Every row of ``paths`` (None: stdin) as a response record, or dropped with its reason
    (counts ``logprob_rows`` with a Logprob file)."""
    tok = None
    if settings.tokenizer is not None:
        from dasd_cli.model.load import load_tokenizer

        tok = load_tokenizer(settings.tokenizer)
    index = LogprobFile(settings.logprobs) if settings.logprobs is not None else None
    if index is not None:
        session.tally.extra["logprob_rows"] = len(index)
    importer = Importer(index, tok, settings.logprobs_mode)

    def convert(batch: list[io.Line]) -> list[Outcome | RecordError]:
        outcomes: list[Outcome | RecordError] = []
        for line in batch:
            try:
                outcomes.append(importer.convert(line))
            except RecordError as err:
                outcomes.append(err)
        return outcomes

    def settle(line: io.Line, outcome: Outcome | RecordError) -> None:
        if isinstance(outcome, RecordError):
            session.bad_record(line, outcome)
        elif outcome.drop is None:
            session.emit(outcome.record)
        else:
            session.drop(outcome.record, "import", *outcome.drop)

    try:
        record_loop(session.tally, batched(input_lines(session, paths), 1), settle, convert)
    finally:
        if index is not None:
            index.close()


def input_lines(session: ImportSession, paths: list[str] | None) -> Iterator[io.Line]:
    """Every data row of every input in order, counted as read: JSONL (any compression,
    stdin included) through the session, Parquet files through pyarrow."""
    for path in paths or ["-"]:
        if is_parquet(path):
            for line in iter_parquet(path):
                session.tally.read += 1
                yield line
        else:
            yield from session.records([path])


@dataclass
class Outcome:
    record: dict[str, Any]
    drop: tuple[str, str] | None = None  # (reason, detail)


class Importer:
    """Turns released rows into records; joins log-probs when given a Logprob file."""

    def __init__(self, logprobs: LogprobFile | None, tokenizer: Any, mode: str) -> None:
        self.logprobs = logprobs
        self.tokenizer = tokenizer
        self.mode = mode

    def convert(self, line: io.Line) -> Outcome:
        """The record of one row, or why it is dropped; a RecordError for a bad row."""
        record = released.to_record(line.record)
        if self.logprobs is None:
            return Outcome(record)
        found = self.logprobs.get(record["uuid"])
        if found is None:
            return Outcome(record, ("missing_logprobs",
                                    f"uuid {record['uuid']} is not in {self.logprobs.path}"))
        ids, logprobs = found
        from dasd_cli.model.tokens import token_offsets

        try:
            decoded, offsets = token_offsets(self.tokenizer, [int(i) for i in ids])
        except (IndexError, OverflowError, TypeError, ValueError) as exc:
            raise RecordError(f"token_ids of {record['uuid']} do not decode: {exc}",
                              reason="bad_logprobs",
                              hint="--tokenizer must be gpt-oss's (o200k_harmony)") from None
        aligned = released.align_tokens(record["response"], decoded, offsets,
                                        [float(x) for x in logprobs])
        if isinstance(aligned, str):
            return Outcome(record, ("tokens_mismatch", aligned))
        return Outcome(released.add_logprobs(record, aligned[0], aligned[1], self.mode))
