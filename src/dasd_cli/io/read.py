"""Reading records: inputs in order, compression sniffed from magic bytes, lines parsed.

Inputs are FILE arguments in order; none or ``-`` means stdin. Compression is sniffed
from magic bytes, also on pipes: zstd (all frames), gzip (all members), else plain.
A malformed line is a :class:`RecordError` naming its file and line, or a counted skip.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
import zstandard

from dasd_cli.errors import DasdError, RecordError, UsageError
from dasd_cli.interrupts import check_interrupt

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20  # bytes per read from a compressed source


class _ZstdFrames(io.RawIOBase):
    """A raw reader over concatenated zstd frames that fails on a truncated stream.

    python-zstandard's stream_reader silently returns a short read on truncation; this
    reader decodes frame by frame and raises when the input ends inside a frame.
    """

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self._raw = raw
        self._name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._pending = b""
        self._pos = 0  # bytes of _pending already handed out
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        if self._pos >= len(self._pending):
            self._pending, self._pos = b"", 0
        while not self._pending and not self._eof:
            chunk = self._raw.read(READ_CHUNK)
            if not chunk:
                self._eof = True
                if self._in_frame:
                    raise DasdError(
                        "truncated zstd stream: input ended inside a frame",
                        hint="the file was cut short (an interrupted copy or writer?); "
                        "records before the cut can be recovered with `zstd -dc`",
                        source=self._name,
                    )
                return
            while chunk:
                self._in_frame = True
                try:
                    out = self._obj.decompress(chunk)
                except zstandard.ZstdError as exc:
                    raise DasdError(f"corrupt zstd stream: {exc}", source=self._name) from None
                self._pending = self._pending + out if self._pending else out
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
                else:
                    chunk = b""

    def readinto(self, buffer: Any) -> int:
        self._fill()
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = memoryview(self._pending)[self._pos:self._pos + n]
        self._pos += n
        return n


def _stdin_name() -> str:
    return "<stdin>"


def open_input(path: str | os.PathLike[str] | None) -> tuple[IO[bytes], str]:
    """Open one input (``None`` or ``-`` is stdin), sniffing its compression.

    Returns a binary line-iterable stream and the name used in error messages.
    """
    if path is None or str(path) == "-":
        raw: IO[bytes] = sys.stdin.buffer
        name = _stdin_name()
    else:
        name = str(path)
        try:
            raw = open(name, "rb", buffering=READ_CHUNK)
        except FileNotFoundError:
            raise DasdError(f"no such file: {name}", hint="check the path") from None
        except IsADirectoryError:
            raise DasdError(f"is a directory, not a records file: {name}") from None
        except PermissionError:
            raise DasdError(f"permission denied: {name}") from None
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw, buffer_size=READ_CHUNK)  # type: ignore[arg-type]
    head = _peek(raw, 4)
    if head.startswith(ZSTD_MAGIC):
        return io.BufferedReader(_ZstdFrames(raw, name), buffer_size=READ_CHUNK), name
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb"), name  # reads every member
    return raw, name


def _peek(raw: IO[bytes], n: int) -> bytes:
    peek = getattr(raw, "peek", None)
    if peek is not None:
        data = peek(n)
        # peek may return fewer bytes than asked on a pipe; ask until we have n or EOF.
        while len(data) < n:
            more = peek(n)
            if len(more) <= len(data):
                break
            data = more
        return data[:n]
    raise DasdError("input stream cannot be sniffed (no peek)")


@dataclass(slots=True)
class Line:
    """One input record with where it came from (for error messages and rejects)."""

    record: dict[str, Any]
    source: str
    line: int


@dataclass(slots=True)
class RawLine:
    """One input line, not parsed yet (parsed by :func:`parse_line`, maybe elsewhere)."""

    data: bytes
    source: str
    line: int


def check_inputs(inputs: list[str] | None) -> list[str | None]:
    """Normalize FILE arguments; refuse to hang on a terminal stdin."""
    paths: list[str | None] = [None if p == "-" else p for p in (inputs or [])] or [None]
    if any(p is None for p in paths) and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError(
            "no input: stdin is a terminal",
            hint="give FILE arguments, or pipe records in: `dasd sample ... | dasd filter`",
        )
    return paths


def iter_raw_lines(paths: Iterable[str | None]) -> Iterator[RawLine]:
    """Every non-blank line of every input in order, unparsed (stream errors raised)."""
    for path in paths:
        stream, name = open_input(path)
        try:
            for lineno, raw in enumerate(stream, start=1):
                check_interrupt()
                if raw.strip():
                    yield RawLine(raw, name, lineno)
        except EOFError:
            raise DasdError("truncated gzip stream", source=name) from None
        except (OSError, gzip.BadGzipFile) as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise DasdError(f"cannot read input: {exc}", source=name) from None
        finally:
            if path is not None:
                stream.close()


def parse_line(raw: RawLine) -> Line:
    """The JSON object on one line, or a :class:`RecordError` naming FILE:LINE.

    The error's ``raw`` attribute holds what a rejects file keeps of the bad line.
    """
    try:
        record = orjson.loads(raw.data)
    except orjson.JSONDecodeError as exc:
        err = RecordError(f"malformed JSON: {_json_problem(exc)}", reason="malformed_json",
                          hint="each line must be one JSON object; "
                          "use --on-error skip to skip bad lines",
                          source=raw.source, line=raw.line)
        err.raw = {"raw": raw.data.decode("utf-8", "replace").rstrip("\n")}  # type: ignore[attr-defined]
        raise err from None
    if not isinstance(record, dict):
        err = RecordError("record is not a JSON object", reason="not_an_object",
                          source=raw.source, line=raw.line)
        err.raw = {"raw": record}  # type: ignore[attr-defined]
        raise err
    return Line(record, raw.source, raw.line)


def iter_lines(paths: Iterable[str | None], on_error: str = "fail",
               skipped: SkipSink | None = None) -> Iterator[Line]:
    """Yield parsed JSON records from every input in order.

    A malformed line raises :class:`RecordError` naming FILE:LINE, or with
    ``on_error == "skip"`` is handed to ``skipped`` and the stream goes on.
    Blank lines are ignored.
    """
    for raw in iter_raw_lines(paths):
        try:
            yield parse_line(raw)
        except RecordError as err:
            if on_error == "skip" and skipped is not None:
                skipped.skip(err, err.raw)  # type: ignore[attr-defined]
                continue
            raise


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    """orjson's message without its 'line 1 column N' (we name the real line)."""
    text = str(exc).split(": line 1 column")[0]
    return f"{text} at column {exc.colno}" if exc.colno else text


class SkipSink:
    """Where a skipped record goes: the tally and, if asked, the rejects file."""

    def __init__(self, tally: Any, rejects: Any, by: str) -> None:
        self.tally = tally
        self.rejects = rejects
        self.by = by

    def skip(self, err: RecordError, record: dict[str, Any]) -> None:
        self.tally.skip(err.reason)
        if self.rejects is not None:
            self.rejects.write(with_rejection(record, self.by, err.reason,
                                              f"{err.message} ({err.source}:{err.line})"))


def with_rejection(record: dict[str, Any], by: str, reason: str, detail: str = "") -> dict[str, Any]:
    """A copy of ``record`` carrying the ``rejected`` object (DESIGN.md "Rejected")."""
    out = dict(record)
    out["rejected"] = {"by": by, "reason": reason, "detail": detail}
    return out
