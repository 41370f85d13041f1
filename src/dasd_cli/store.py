"""On-disk stores for what must not live on the heap at the paper's scale.

At stage 2 (330K responses, 5.8G tokens) the commands that need every record before
they can write one (mix, pack, train) keep record bodies and tokens here and hold only
small per-record metadata in memory (DESIGN.md "Scale"):

- :class:`RecordSpill`: serialized records, each zstd-compressed on its own, in one
  unlinked temporary file; a record comes back by its handle (``dasd mix``).
- :class:`TokenStoreWriter` / :class:`TokenStore`: ragged int32 (or float32) columns
  (one row per sample or packed sequence) as plain ``.npy`` files plus an ``offsets.npy`` index and
  ``meta.json``. ``np.load(path, mmap_mode="r")`` opens every file. ``dasd pack``
  keeps its tokens in one while it packs; ``dasd train`` converts packed JSONL into one
  once and every rank of every run reads it.

Reads use ``pread`` into small buffers rather than a memory map: the data still sits once
in the node's page cache, shared by every rank, but a process's resident set does not
grow with the pages it has touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

NPY_HEADER_BYTES = 128  # fixed .npy header size (v1.0 pads its header with spaces)
SPILL_ZSTD_LEVEL = 1  # a spill is read once: speed over ratio
STORE_FORMAT = "dasd-token-store"
STORE_VERSION = 2  # 2: columns may be float32 (meta "dtypes")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: one process
    builds a cached folder while the others wait, then find it built."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- record spill


class RecordSpill:
    """Serialized records on disk, each compressed alone; memory holds only handles.

    The file is created unlinked (``tempfile.TemporaryFile``, in ``$TMPDIR``), so it
    disappears with the process, also when it is killed.
    """

    def __init__(self, folder: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(prefix="dasd-spill-", dir=folder)
        self._fd = self._file.fileno()
        self._end = 0
        self._cctx = zstandard.ZstdCompressor(level=SPILL_ZSTD_LEVEL)
        self._dctx = zstandard.ZstdDecompressor()
        self.bytes_in = 0  # uncompressed bytes put

    def put(self, data: bytes) -> int:
        """Store one serialized record; returns its handle (an int)."""
        blob = self._cctx.compress(data)
        os.pwrite(self._fd, blob, self._end)
        handle = (self._end << 32) | len(blob)
        self._end += len(blob)
        self.bytes_in += len(data)
        return handle

    def get(self, handle: int) -> bytes:
        """The bytes stored under ``handle``."""
        offset, length = handle >> 32, handle & 0xFFFFFFFF
        return self._dctx.decompress(os.pread(self._fd, length, offset))

    @property
    def bytes_on_disk(self) -> int:
        return self._end

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordSpill:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- .npy appends


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """A v1.0 .npy header for a 1-D array, padded to exactly NPY_HEADER_BYTES."""
    text = (f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, "
            f"'shape': ({length},), }}")
    body = NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    text = text.ljust(body - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text.encode("latin1")


class NpyAppender:
    """A 1-D ``.npy`` file written by appending; its header is fixed up on close."""

    def __init__(self, path: Path, dtype: Any) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._fh = open(path, "wb")
        self._fh.write(b"\0" * NPY_HEADER_BYTES)

    def append(self, values: Any) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype)
        self._fh.write(data.tobytes())
        self.length += data.shape[0]

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._fh.write(_npy_header(self.dtype, self.length))
        self._fh.close()


def read_rows(fd: int, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Elements ``[start, stop)`` of a 1-D .npy file written by :class:`NpyAppender`."""
    size = dtype.itemsize
    buffer = bytearray((stop - start) * size)  # a writable array, owned by the caller
    got = os.preadv(fd, [buffer], NPY_HEADER_BYTES + start * size)
    if got != len(buffer):
        raise OSError(f"token store file is shorter than its index says ({got} of {len(buffer)} bytes)")
    return np.frombuffer(buffer, dtype=dtype)


# --------------------------------------------------------------------------- token store


class TokenStoreWriter:
    """Append rows of columns (all the same length within a row) to a folder.

    Columns are int32 (token ids, labels, positions) unless ``dtypes`` names another
    dtype for one (float32 per-token log-probs). ``per_row`` names small per-row integer
    arrays (e.g. a prompt length) kept beside the index. :meth:`close` writes
    ``offsets.npy`` and ``meta.json`` last, so a folder with a ``meta.json`` is complete.
    """

    def __init__(self, folder: Path, columns: Sequence[str], per_row: Sequence[str] = (),
                 dtypes: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = tuple(columns)
        self.dtypes = {name: np.dtype((dtypes or {}).get(name, np.int32)) for name in self.columns}
        self._files = {name: NpyAppender(self.folder / f"{name}.npy", self.dtypes[name])
                       for name in self.columns}
        self._per_row = {name: array("q") for name in per_row}
        self._offsets = array("q", [0])  # 8 bytes per row: per-record metadata

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def tokens(self) -> int:
        return self._offsets[-1]

    def append(self, row: Mapping[str, np.ndarray], **per_row: int) -> int:
        """Add one row; returns its index."""
        length = len(row[self.columns[0]])
        for name in self.columns:  # check every column before writing any
            if len(row[name]) != length:
                raise ValueError(f"column {name} has {len(row[name])} values, not {length}")
        for name in self.columns:
            self._files[name].append(row[name])
        for name, values in self._per_row.items():
            values.append(int(per_row[name]))
        self._offsets.append(self._offsets[-1] + length)
        return len(self._offsets) - 2

    def close(self, meta: Mapping[str, Any] | None = None) -> None:
        for appender in self._files.values():
            appender.close()
        np.save(self.folder / "offsets.npy", np.frombuffer(self._offsets, dtype=np.int64))
        for name, values in self._per_row.items():
            np.save(self.folder / f"{name}.npy", np.frombuffer(values, dtype=np.int64))
        info = {"format": STORE_FORMAT, "version": STORE_VERSION, "columns": list(self.columns),
                "dtypes": {name: dtype.str for name, dtype in self.dtypes.items()},
                "per_row": list(self._per_row), "rows": len(self), "tokens": int(self.tokens),
                **(meta or {})}
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.folder / "meta.json")


class TokenStore:
    """A finished token store, read row by row with ``pread``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != STORE_FORMAT or self.meta.get("version") != STORE_VERSION:
            raise ValueError(f"{self.folder} is not a version-{STORE_VERSION} dasd token store")
        self.offsets = np.load(self.folder / "offsets.npy")
        self.per_row = {name: np.load(self.folder / f"{name}.npy") for name in self.meta["per_row"]}
        self._fds = {name: os.open(self.folder / f"{name}.npy", os.O_RDONLY)
                     for name in self.meta["columns"]}
        self._dtypes = {name: np.dtype(self.meta["dtypes"][name]) for name in self.meta["columns"]}

    @property
    def columns(self) -> list[str]:
        return list(self.meta["columns"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, index: int, column: str) -> np.ndarray:
        """One row of one column (a fresh array)."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return read_rows(self._fds[column], self._dtypes[column], start, stop)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
