"""Writing records: stdout kept for records alone, ``-o`` written atomically, compression.

Output goes to stdout or to ``-o PATH`` through a temp file in the same folder that is
renamed on success, so no half-written file ever carries the final name (a device or
FIFO such as ``-o /dev/null`` is written in place, never renamed over). One process writes
an ``-o`` path at a time (:class:`OutputLock`): a second writer of the same path stops
with an error instead of interleaving or duplicating records. A Ctrl-C leaves
stdout holding complete records (and a closed zstd frame): a record is written inside
``interrupts.critical``, and the interrupt lands after it.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import orjson
import zstandard

from dasd_cli.errors import DasdError, UsageError
from dasd_cli.interrupts import check_interrupt, critical
from dasd_cli.io.read import GZIP_MAGIC, ZSTD_MAGIC

FLUSH_BYTES = 1 << 20  # buffered output bytes that trigger a write
FLUSH_SECONDS = 0.5  # a slow producer's records reach the pipe at least this often
# zstd levels: a pipe between two dasd commands is transient, so speed wins over ratio
# (level 1); a file is kept, so it gets the usual default.
ZSTD_LEVEL_PIPE = 1
ZSTD_LEVEL_FILE = 3
COMPRESS_CHOICES = ("auto", "zstd", "gzip", "none")

_records_out: IO[bytes] | None = None  # where records go once stdout is claimed
_held_locks: set[str] = set()  # lock files this process holds (one output given twice)


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


class OutputLock:
    """An exclusive lock on an output path, held by the one process writing it.

    The lock is taken without waiting: a second writer (a double-started make target, a
    retried job with ``--resume``) fails at once with a one-line error naming the path.
    It is a ``flock`` on a small hidden file beside the output, ``.NAME.lock``, not on the
    output itself, because an atomic write has no final file until it is renamed into
    place (creating one early would put a half-written file under the final name), and
    its temp file has a new name in every process. A lock file in the output's own folder
    is seen by every process writing there, also across machines sharing the file system,
    where a lock in a private folder (``$TMPDIR``, ``/run``) would not be. It does not
    stay: the holder removes it when done, while still holding it; a process that opened
    the file just before it was removed notices that the name now points elsewhere (or
    nowhere) and takes the lock afresh. Only a killed writer leaves it behind, empty and
    unlocked, and the next writer takes it over and removes it.
    """

    def __init__(self, path: str) -> None:
        folder, name = os.path.split(os.path.abspath(path))
        self.output = path
        self.path = os.path.join(folder, f".{name}.lock")
        self._fd: int | None = None
        if self.path in _held_locks:
            raise UsageError(f"{path} is given twice as an output of this command",
                             hint="-o and --rejects need different paths")
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise DasdError(f"another dasd process is writing {path}; wait for it to "
                                    "finish or write to another path") from None
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                self._fd = fd
                _held_locks.add(self.path)
            else:
                os.close(fd)  # its holder removed it as we opened it: lock the new one

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: see the class docstring
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        _held_locks.discard(self.path)


class RecordWriter:
    """Writes JSON records to stdout or atomically to a path, compressed as asked.

    ``append=True`` (resumable writers) appends to the final path directly and flushes
    every record as it is written; every other path is written through a temp file.
    Use as a context manager: on success the temp file is renamed into place; on an
    error or interrupt, stdout keeps every complete record and a temp file is removed.
    A path (not a device or FIFO) is locked from here until :meth:`close` (:class:`OutputLock`).
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
        self._lock: OutputLock | None = None
        if self.path is None:
            self._sink: IO[bytes] = records_stream()
        elif is_special_file(self.path):
            self._sink = open(self.path, "ab" if append else "wb")  # /dev/null, a FIFO: never renamed over
        else:
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise DasdError(f"output folder does not exist: {folder}")
            self._lock = OutputLock(self.path)
            try:
                if append:
                    self._sink = open(self.path, "ab")
                else:
                    fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                                     suffix=".tmp", dir=folder)
                    self._sink = os.fdopen(fd, "wb")
            except BaseException:
                self._lock.release()
                raise
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

    def append_instead(self) -> None:
        """Append to the final path itself from now on, not through a temp file (``--resume``).

        The lock is kept throughout, so what was read from the path before (the ids already
        there) stays true while this writer appends. Only before the first record.
        """
        if self.count or self.kind != "none" or self.path is None:
            raise ValueError("only an unused plain -o writer can switch to appending")
        if self._tmp is not None:
            self._sink.close()
            os.unlink(self._tmp)
            self._tmp = None
            self._sink = open(self.path, "ab")
        self.append = self.flush_every_record = True

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
            try:
                if self._tmp is not None:
                    if success:
                        os.replace(self._tmp, self.path)  # type: ignore[arg-type]
                    elif os.path.exists(self._tmp):
                        os.unlink(self._tmp)
                    self._tmp = None
            finally:
                if self._lock is not None:
                    self._lock.release()  # after the rename: the next writer finds the file

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, BrokenPipeError):
            self._broken = True
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)
            if self._lock is not None:
                self._lock.release()
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
