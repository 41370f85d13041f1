"""Packed records as the trainer reads them: a token store converted once, then reused.

``dasd train`` does not keep packed sequences on the heap. The first run over a set of
packed files converts them into a token store (``dasd_cli.store``: ``input_ids``,
``labels`` and ``position_ids`` as int32 ``.npy`` files, for on-policy data also the
float32 ``sampler_logprobs`` and ``teacher_logprobs``, an offsets index, the loss
target count of every sequence, and ``meta.json``), in a folder named by a hash of the
files' bytes (and ``--on-error``; hashed once per file version, see
:func:`remembered_key`). Every later run over the same bytes, every
``--resume`` and every rank of a distributed run opens that folder instead of parsing
JSON again; ranks read sequences with ``pread``, so a node holds one copy of the data
in its page cache, whatever its number of ranks.

The first rank to arrive converts, under a lock, into a temporary folder renamed into
place when complete; the others wait and open it. On shared storage (the folder given
by ``--token-store``) the ranks of every node map the same files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dasd_cli.core.train.batching import (STREAMS, PackedSequence, check_packed, check_streams,
                                          check_vocab, target_count)
from dasd_cli.errors import DasdError, RecordError
from dasd_cli.store import STORE_VERSION, TokenStore, TokenStoreWriter, locked

COLUMNS = ("input_ids", "labels", "position_ids")
HASH_BLOCK = 8 << 20  # bytes read at a time when hashing the input files


class StoredSequences:
    """Packed sequences in a token store, with the interface of ``SequenceList``."""

    def __init__(self, store: TokenStore, temporary: bool = False) -> None:
        self.store = store
        self.targets = store.per_row["targets"]
        self.temporary = temporary  # converted from a stream: removed on close

    def close(self) -> None:
        self.store.close()
        if self.temporary:
            shutil.rmtree(self.store.folder, ignore_errors=True)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> PackedSequence:
        row = [self.store.row(index, name) for name in COLUMNS]
        streams = [self.store.row(index, name) for name in STREAMS] if self.has_streams else [None, None]
        return PackedSequence(*row, [], *streams)

    @property
    def has_streams(self) -> bool:
        """Whether the sequences carry the sampler's and the teacher's log-probs (on-policy)."""
        return all(name in self.store.columns for name in STREAMS)

    def target_count(self, index: int) -> int:
        return int(self.targets[index])

    @property
    def meta(self) -> dict[str, Any]:
        return self.store.meta

    def check_model(self, vocab_size: int, tokenizer_fingerprint: str) -> None:
        """Refuse data packed for another tokenizer, or with ids past the vocabulary."""
        meta = self.store.meta
        packed_with = meta.get("tokenizers") or []
        if len(packed_with) > 1:
            raise DasdError(f"the packed data mixes {len(packed_with)} tokenizers "
                            f"({', '.join(packed_with)})",
                            hint="pack every input with the same --tokenizer (the student's)")
        if packed_with and packed_with[0] != tokenizer_fingerprint:
            raise DasdError(
                f"the data was packed with another tokenizer ({packed_with[0]}) than the "
                f"model's ({tokenizer_fingerprint}): token ids would mean different text",
                hint="re-run dasd pack with --tokenizer set to the model you train")
        try:
            check_vocab(int(meta["max_token"]), int(meta["max_label"]), vocab_size,
                        where=meta.get("max_token_at", ""))
        except RecordError as err:  # found at conversion, named by FILE:LINE in the message
            raise DasdError(err.message, hint=err.hint) from None


def content_key(paths: list[str], on_error: str) -> str:
    """A hash of the input files' bytes, in order, and of what the conversion depends on."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"dasd-token-store/{STORE_VERSION}/{on_error}".encode())
    for path in paths:
        digest.update(b"\x00file\x00")
        with open(path, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def remembered_key(paths: list[str], on_error: str, store_root: Path) -> str:
    """:func:`content_key`, hashed once per file version: the key is remembered under the
    files' identity (path, device, inode, size, modification time in ns), so a later run on
    unchanged files skips reading them again (gigabytes at the paper's scale), while a
    rewritten file, whose modification time changes, is hashed again."""
    identity = hashlib.blake2b(digest_size=16)
    identity.update(f"{STORE_VERSION}/{on_error}".encode())
    for path in paths:
        st = os.stat(path)
        identity.update(repr((os.path.realpath(path), st.st_dev, st.st_ino, st.st_size,
                              st.st_mtime_ns)).encode())
    memo = store_root / "by-stat" / identity.hexdigest()
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    key = content_key(paths, on_error)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(key + "\n")
    os.replace(tmp, memo)
    return key


def cacheable(paths: list[str] | None) -> bool:
    """Only regular files can be hashed before reading (stdin, pipes and FIFOs cannot)."""
    if not paths:
        return False
    for path in paths:
        if path == "-":
            return False
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return False
        except OSError:
            return False  # the reader names the missing file
    return True


def default_root() -> Path:
    """``$DASD_TOKEN_STORE``, else ``$DASD_CACHE/tokens``."""
    from dasd_cli.model.load import cache_dir

    env = os.environ.get("DASD_TOKEN_STORE")
    return Path(env) if env else cache_dir() / "tokens"


def open_sequences(session: Any, files: list[str] | None, store_root: Path) -> StoredSequences:
    """The packed sequences of ``files`` (stdin when none): from the cached token store
    when one exists for their content, else converted now (and cached when they are
    regular files). ``session`` is the command's session: it counts records and reports
    bad ones, also when they are counted from an earlier conversion."""
    if not cacheable(files):
        folder = Path(tempfile.mkdtemp(prefix="dasd-train-tokens-"))
        try:
            _convert(session, files, folder)
            return StoredSequences(TokenStore(folder), temporary=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    assert files is not None
    key = remembered_key(files, session.common.on_error, store_root)
    folder = store_root / key
    if not (folder / "meta.json").is_file():
        with locked(store_root / f"{key}.lock"):
            if not (folder / "meta.json").is_file():
                _build(session, files, folder)
                return StoredSequences(TokenStore(folder))
    store = TokenStore(folder)
    if session.rejects is not None and store.meta["counts"].get("skipped_by_reason"):
        _recount(session, files)  # the rejects file is asked for: read the skipped records again
    else:
        _replay_counts(session, store.meta)
    session.tally.extra["token_store"] = "reused"
    return StoredSequences(store)


def _build(session: Any, files: list[str], folder: Path) -> None:
    """Convert into a temporary folder beside ``folder``, then rename it into place."""
    tmp = folder.parent / f".{folder.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(session, files, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another node finished first: same bytes
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _convert(session: Any, files: list[str] | None, folder: Path) -> None:
    """Check every packed record and append it to a new token store in ``folder``.

    The first record decides whether the store has the on-policy log-prob columns; a
    later record that differs is a bad record (reason ``mixed_objectives``).
    """
    writer = None
    max_token, max_label, max_token_at = -1, -1, ""
    tokenizers: list[str] = []
    unmarked = 0  # records without a tokenizer fingerprint (packed by an older dasd)
    for line, (input_ids, labels, positions), streams in _checked(session, files):
        if writer is None:
            writer = _writer(folder, streams is not None)
        fingerprint = line.record.get("tokenizer")
        if fingerprint is None:
            unmarked += 1
        elif fingerprint not in tokenizers:
            tokenizers.append(str(fingerprint))
        top = int(input_ids.max())
        if top > max_token:
            max_token, max_token_at = top, f"{line.source}:{line.line}"
        max_label = max(max_label, int(labels.max()))
        row = dict(zip(COLUMNS, (input_ids, labels, positions)))
        if streams is not None:
            row.update(zip(STREAMS, streams))
        writer.append(row, targets=target_count(labels, positions))
    if writer is None:
        writer = _writer(folder, False)
    tally = session.tally
    writer.close({"tokenizers": tokenizers, "unmarked": unmarked, "max_token": max_token,
                  "max_label": max_label, "max_token_at": max_token_at,
                  "counts": {"read": tally.read, "kept": tally.kept,
                             "skipped_by_reason": dict(tally.skipped)}})


def _writer(folder: Path, streams: bool) -> TokenStoreWriter:
    columns = COLUMNS + (STREAMS if streams else ())
    return TokenStoreWriter(folder, columns, per_row=("targets",),
                            dtypes={name: "float32" for name in STREAMS} if streams else None)


def _replay_counts(session: Any, meta: dict[str, Any]) -> None:
    """The summary of a run on a cached store counts the records as the conversion did."""
    counts = meta["counts"]
    tally = session.tally
    tally.keep(int(counts["kept"]))
    tally.read += int(counts["kept"])
    for reason, n in counts.get("skipped_by_reason", {}).items():
        for _ in range(int(n)):
            tally.skip(reason)


def _checked(session: Any, files: list[str] | None) -> Iterator[tuple[Any, tuple, Any]]:
    """Every packed record that passes :func:`check_packed` and :func:`check_streams`
    (counted as kept), with its arrays and its log-prob streams (None: SFT data); the
    others go to ``session.bad_record`` (stop, or skip to --rejects). The first good
    record decides whether the data is on-policy; one that differs is a bad record."""
    on_policy = None
    for line in session.records(files):
        try:
            arrays = check_packed(line.record)
            streams = check_streams(line.record, len(arrays[0]))
            if on_policy is None:
                on_policy = streams is not None
            elif on_policy != (streams is not None):
                raise RecordError("packed record " + ("lacks" if on_policy else "carries") + " on-policy "
                                  "log-probs (sampler_logprobs, teacher_logprobs), unlike the first record",
                                  reason="mixed_objectives", hint="train on-policy and SFT data in separate runs")
        except RecordError as err:
            session.bad_record(line, err)
            continue
        session.tally.keep()
        yield line, arrays, streams


def _recount(session: Any, files: list[str]) -> None:
    """Check every record again, counting and routing the bad ones to --rejects."""
    for _ in _checked(session, files):
        pass
