"""``dasd import``'s record work: released rows in, response records out, log-probs joined.

Each data row (JSONL through io, Parquet through pyarrow batches) becomes a response
record (core.released). With a Logprob file, the row's ``uuid`` is looked up there, its
``token_ids`` are decoded with the gpt-oss tokenizer (model.tokens gives each token's
start in the decoded text), and the log-probs are laid over the response.
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


class ImportSession(Protocol):
    """What :func:`input_lines` reads and counts through (a command's session)."""

    tally: Tally

    def records(self, inputs: list[str] | None = None) -> Iterator[io.Line]: ...


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
