"""Reading the released Superior-Reasoning files: Parquet rows, and the Logprob join.

Parquet goes through pyarrow record batches (the optional ``parquet`` extra, imported
on use). The Logprob file is joined by uuid without holding its log-prob lists: one
pass records where each ``sample_uuid`` lies (a byte offset of a plain JSONL file, or a
row group and row of a Parquet file), and each lookup reads that one row back. Memory is
one small index entry per Logprob row plus the row being read (one Parquet row group).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import orjson

from dasd_cli.errors import DasdError, RecordError, UsageError
from dasd_cli.interrupts import check_interrupt
from dasd_cli.io.read import GZIP_MAGIC, ZSTD_MAGIC, Line

PARQUET_MAGIC = b"PAR1"
BATCH_ROWS = 64  # Parquet rows per record batch: a batch of 65K-token rows stays small
_UUID = re.compile(rb'"sample_uuid"\s*:\s*"([^"]*)"')


def is_parquet(path: str | None) -> bool:
    """Whether ``path`` is a Parquet file (magic bytes; stdin never is)."""
    if path is None or path == "-" or not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading Parquet needs pyarrow, which is not installed",
                         hint="pip install 'dasd[parquet]' (or convert the file to JSONL)") from None
    return pq


def iter_parquet(path: str, columns: list[str] | None = None) -> Iterator[Line]:
    """Every row of a Parquet file as a record, in order; ``line`` is the row number from 1."""
    pq = _pyarrow_parquet()
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise DasdError(f"cannot read Parquet file: {exc}", source=path) from None
    row = 0
    for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            check_interrupt()
            row += 1
            yield Line(record, path, row)


class LogprobFile:
    """The released ...-Logprob file, indexed by ``sample_uuid`` for lookups."""

    def __init__(self, path: str) -> None:
        if path == "-" or not os.path.isfile(path):
            raise UsageError(f"--logprobs {path}: not a file",
                             hint="the Logprob file is read twice (index, then lookups): give a file, not a pipe")
        self.path = path
        self.parquet = is_parquet(path)
        self._index: dict[str, int] = {}  # uuid -> byte offset, or row group << 32 | row
        self._cached: tuple[int, Any] | None = None  # (row group, its Arrow table)
        self._handle: Any = None  # the open file (JSONL) or ParquetFile the lookups read
        if self.parquet:
            self._index_parquet()
        else:
            self._index_jsonl()

    def close(self) -> None:
        if self._handle is not None and not self.parquet:
            self._handle.close()
        self._handle = self._cached = None

    def __enter__(self) -> LogprobFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._index)

    def _index_jsonl(self) -> None:
        with open(self.path, "rb") as handle:
            head = handle.read(4)
            if head.startswith(ZSTD_MAGIC) or head.startswith(GZIP_MAGIC):
                raise UsageError(f"--logprobs {self.path}: compressed; the join seeks in it",
                                 hint="decompress it first (zstd -d / gunzip), or use the Parquet file")
            handle.seek(0)
            offset, lineno = 0, 0
            for raw in handle:
                lineno += 1
                if lineno % 1024 == 0:
                    check_interrupt()
                if raw.strip():
                    match = _UUID.search(raw, 0, 4096)
                    if match is None:
                        raise RecordError("Logprob row without 'sample_uuid'", reason="missing_field",
                                          source=self.path, line=lineno)
                    self._index.setdefault(match.group(1).decode(), offset)
                offset += len(raw)

    def _index_parquet(self) -> None:
        handle = self._handle = _pyarrow_parquet().ParquetFile(self.path)
        for group in range(handle.num_row_groups):
            check_interrupt()
            uuids = handle.read_row_group(group, columns=["sample_uuid"]).column(0).to_pylist()
            for row, uuid in enumerate(uuids):
                self._index.setdefault(str(uuid), (group << 32) | row)

    def get(self, uuid: str) -> tuple[list[int], list[float]] | None:
        """The token ids and log-probs of ``uuid``, or None when the file has no such row."""
        where = self._index.get(uuid)
        if where is None:
            return None
        row = self._read_parquet(where) if self.parquet else self._read_jsonl(where)
        ids, logprobs = row.get("token_ids"), row.get("logprobs")
        if not isinstance(ids, list) or not isinstance(logprobs, list) or len(ids) != len(logprobs):
            raise RecordError(f"Logprob row of {uuid} needs token_ids and logprobs of one length",
                              reason="bad_logprobs", source=self.path)
        return ids, logprobs

    def _read_jsonl(self, offset: int) -> dict[str, Any]:
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(offset)
        raw = self._handle.readline()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"malformed JSON in the Logprob file at byte {offset}: {exc}",
                              reason="malformed_json", source=self.path) from None

    def _read_parquet(self, where: int) -> dict[str, Any]:
        group, row = where >> 32, where & 0xFFFFFFFF
        if self._cached is None or self._cached[0] != group:
            self._cached = None  # free the previous group before reading the next
            self._cached = (group, self._handle.read_row_group(group))
        return self._cached[1].slice(row, 1).to_pylist()[0]
