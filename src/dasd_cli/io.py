"""Every stream dasd touches: inputs, outputs, compression, rejects, stats.

Rules (DESIGN.md "Streams"):
- Inputs are FILE arguments in order; none or ``-`` means stdin. Compression is sniffed
  from magic bytes, also on pipes: zstd (all frames), gzip (all members), else plain.
- Output goes to stdout or to ``-o PATH`` through a temp file in the same folder that is
  renamed on success, so no half-written file ever carries the final name (a device or
  FIFO such as ``-o /dev/null`` is written in place, never renamed over).
- stdout carries records only; everything human goes to stderr.
- A Ctrl-C leaves stdout holding complete records (and a closed zstd frame): a record
  is written inside ``interrupts.critical``, and the interrupt lands after it.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from dasd_cli.errors import DasdError, RecordError, UsageError
from dasd_cli.interrupts import check_interrupt, critical

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20  # bytes per read from a compressed source
FLUSH_BYTES = 1 << 20  # buffered output bytes that trigger a write
FLUSH_SECONDS = 0.5  # a slow producer's records reach the pipe at least this often
# zstd levels: a pipe between two dasd commands is transient, so speed wins (level 1
# compresses ~2x faster than 3); a file is kept, so it gets the usual default.
ZSTD_LEVEL_PIPE = 1
ZSTD_LEVEL_FILE = 3
COMPRESS_CHOICES = ("auto", "zstd", "gzip", "none")


# --------------------------------------------------------------------------- inputs


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
               skipped: "SkipSink | None" = None) -> Iterator[Line]:
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

    def __init__(self, tally: "Any", rejects: "RecordWriter | None", by: str) -> None:
        self.tally = tally
        self.rejects = rejects
        self.by = by

    def skip(self, err: RecordError, record: dict[str, Any]) -> None:
        self.tally.skip(err.reason)
        if self.rejects is not None:
            self.rejects.write(with_rejection(record, self.by, err.reason,
                                              f"{err.message} ({err.source}:{err.line})"))


def with_rejection(record: dict[str, Any], by: str, reason: str, detail: str = "") -> dict[str, Any]:
    """A copy of ``record`` carrying the DESIGN.md ``rejected`` object."""
    out = dict(record)
    out["rejected"] = {"by": by, "reason": reason, "detail": detail}
    return out


# --------------------------------------------------------------------------- stdout

_records_out: IO[bytes] | None = None  # where records go once stdout is claimed


def claim_stdout() -> None:
    """Keep stdout for records alone, whatever libraries print.

    The original stdout is kept on a private descriptor for the record writer, and fd 1
    is pointed at stderr, so ``print``, loggers bound to ``sys.stdout`` and C-level writes
    (DeepSpeed's accelerator banner, vLLM's workers) land on stderr. Idempotent; does
    nothing where stdout is not fd 1 (in-process test runners).
    """
    global _records_out
    if _records_out is not None:
        return
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    if fd != 1:
        return
    sys.stdout.flush()
    _records_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)


def discard_records() -> None:
    """Records written from here on go nowhere (non-zero ranks of a distributed run)."""
    global _records_out
    claim_stdout()
    _records_out = open(os.devnull, "wb")


def records_stream() -> IO[bytes]:
    """The binary stream records are written to when no -o is given."""
    return _records_out if _records_out is not None else sys.stdout.buffer


# --------------------------------------------------------------------------- outputs


def resolve_compression(compress: str, output: str | None, stream: IO[bytes] | None = None) -> str:
    """Turn ``auto`` into zstd/gzip/none from the -o extension or whether stdout is a tty."""
    if compress not in COMPRESS_CHOICES:
        raise UsageError(f"--compress must be one of {', '.join(COMPRESS_CHOICES)}, not {compress!r}")
    if compress != "auto":
        return compress
    if output is not None and output != "-":
        suffix = Path(output).suffix.lower()
        return {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip"}.get(suffix, "none")
    stream = stream if stream is not None else records_stream()
    return "none" if stream is not None and stream.isatty() else "zstd"


class RecordWriter:
    """Writes JSON records to stdout or atomically to a path, compressed as asked.

    ``append=True`` (resumable writers) appends to the final path directly and flushes
    every record as it is written; every other path is written through a temp file.
    Use as a context manager: on success the temp file is renamed into place; on an
    error or interrupt, stdout keeps every complete record and a temp file is removed.
    """

    def __init__(self, output: str | None = None, compress: str = "auto", *,
                 append: bool = False, flush_every_record: bool = False) -> None:
        self.path = None if output in (None, "-") else str(output)
        self.kind = resolve_compression(compress, self.path)
        self.append = append
        self.flush_every_record = flush_every_record or append
        self.count = 0
        self._buffer = bytearray()
        self._last_flush = time.monotonic()
        self._tmp: str | None = None
        self._broken = False
        if self.path is None:
            self._sink: IO[bytes] = records_stream()
        elif append:
            self._sink = open(self.path, "ab")
        elif is_special_file(self.path):
            self._sink = open(self.path, "wb")  # /dev/null, a FIFO: never renamed over
        else:
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise DasdError(f"output folder does not exist: {folder}")
            fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                             suffix=".tmp", dir=folder)
            self._sink = os.fdopen(fd, "wb")
        self._zstd = None
        self._gzip = None
        self._level = ZSTD_LEVEL_FILE if self.path is not None else ZSTD_LEVEL_PIPE
        if self.kind == "zstd":
            self._zstd = zstandard.ZstdCompressor(level=self._level).compressobj()
        elif self.kind == "gzip":
            self._gzip = gzip.GzipFile(fileobj=self._sink, mode="wb", compresslevel=6)

    # -- writing
    def write(self, record: dict[str, Any]) -> None:
        self.write_line(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))

    def write_line(self, data: bytes) -> None:
        """Write one already-serialized record (no trailing newline)."""
        self._buffer += data
        self._buffer += b"\n"
        self.count += 1
        if (self.flush_every_record or len(self._buffer) >= FLUSH_BYTES
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS):
            self.flush()

    def flush(self, end_frame: bool = False) -> None:
        """Push buffered records to the sink as decodable bytes."""
        if self._broken:
            return
        with critical:
            data = bytes(self._buffer)
            self._buffer.clear()
            if self._zstd is not None:
                mode = (zstandard.COMPRESSOBJ_FLUSH_FINISH if end_frame
                        else zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                payload = self._zstd.compress(data) + self._zstd.flush(mode)
                if end_frame:
                    self._zstd = zstandard.ZstdCompressor(level=self._level).compressobj()
                self._sink.write(payload)
            elif self._gzip is not None:
                self._gzip.write(data)
                self._gzip.flush()
            else:
                self._sink.write(data)
            self._sink.flush()
            if self.append:
                os.fsync(self._sink.fileno())
            self._last_flush = time.monotonic()
        check_interrupt()

    # -- closing
    def close(self, success: bool) -> None:
        """Finish the stream. On success an -o temp file takes the final name."""
        if self._broken:
            return
        try:
            if success or self.path is None or self.append:
                self.flush(end_frame=self._zstd is not None)
                if self._gzip is not None:
                    self._gzip.close()
            if self.path is not None:
                self._sink.close()
        except BrokenPipeError:
            self._broken = True
            raise
        finally:
            if self._tmp is not None:
                if success:
                    os.replace(self._tmp, self.path)  # type: ignore[arg-type]
                elif os.path.exists(self._tmp):
                    os.unlink(self._tmp)
                self._tmp = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, BrokenPipeError):
            self._broken = True
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)
            return
        try:
            self.close(success=exc_type is None)
        except BrokenPipeError:
            if exc_type is None:
                raise


def read_existing_ids(path: str, field: str = "id") -> tuple[set[str], int]:
    """Ids already present in a (possibly torn) output file, for ``--resume``.

    A torn last line (a killed writer) is cut off the file so appends stay valid JSONL.
    Returns the ids and the number of complete records. Only plain files can be resumed.
    """
    ids: set[str] = set()
    if not os.path.exists(path):
        return ids, 0
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(ZSTD_MAGIC) or head.startswith(GZIP_MAGIC):
        raise UsageError(f"--resume needs a plain .jsonl output, not a compressed one: {path}")
    good_end = 0
    count = 0
    with open(path, "rb") as fh:
        offset = 0
        for raw in fh:
            end = offset + len(raw)
            if not raw.endswith(b"\n"):
                break  # torn tail
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                break
            if isinstance(record, dict) and field in record:
                ids.add(str(record[field]))
            count += 1
            good_end = end
            offset = end
    if good_end != os.path.getsize(path):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return ids, count


def write_json_atomic(path: str, data: Any) -> None:
    """Write a JSON document (``--stats``) through a temp file and rename."""
    write_text_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def is_special_file(path: str) -> bool:
    """An existing path that is not a regular file or folder (a device such as /dev/null,
    a FIFO): written in place, since renaming a temp file over it would replace it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_text_atomic(path: str, text: str | bytes) -> None:
    """Write a report, page or image file through a temp file and rename."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if is_special_file(path):
        with open(path, "wb") as fh:
            fh.write(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- stderr


def stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def say(text: str) -> None:
    """One line for the human, on stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def progress(quiet: bool, transient: bool = True) -> Any:
    """A rich progress display on stderr when it is a terminal and not --quiet, else None."""
    if quiet or not stderr_is_terminal():
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


def silence_stdout_at_fd_level() -> None:
    """After a broken pipe: point fd 1 at /dev/null so interpreter exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, records_stream().fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def route_library_logging_to_stderr() -> None:
    """vLLM, DeepSpeed and friends log to stdout by default; stdout is for records."""
    import logging

    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("vllm", "deepspeed", "DeepSpeed", "transformers", "torch"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)  # type: ignore[attr-defined]
