"""``dasd pack``'s record work: tokenize response records, then pack them into sequences.

Records are tokenized as the student sees them in training (chat template prompt + raw
response + end of turn, core/chat.py) in batches: here with the fast tokenizer's own
threads, or with ``workers`` > 1 parsed and tokenized in that many processes, in input
order. Samples over ``cutoff_len`` are dropped (never truncated). The tokens go to an
on-disk store in ``$TMPDIR`` (4 bytes per token) as they come, and memory keeps only each
sample's id, length and prompt length. Best-fit decreasing runs on the lengths, and each
sequence is built by reading its samples' tokens back (DESIGN.md "Packed sequence").
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from dasd_cli import io
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError
from dasd_cli.pipeline.loop import record_loop

TOKENIZE_BATCH = 256  # records per batched tokenizer call (and per chunk sent to a worker)
CHUNK_BYTES = 8 << 20  # a chunk also ends at this many input bytes (bounds worker memory)

# One sample, tokenized: (id, int32 token ids, prompt length); None where the line is unusable.
Tokenized = Optional[tuple[str, Any, int]]


@dataclass
class PackSettings:
    """How ``dasd pack`` tokenizes and packs: its flags, every one given (the command builds it)."""

    cutoff_len: int  # tokens per packed sequence; a longer sample is dropped
    tokenizer: str | None  # the student tokenizer and chat template (None: the embedded default)
    pack: bool  # several samples per sequence (best-fit decreasing), or one in input order
    system_prompt: str | None  # added to records without a system turn
    workers: int  # processes that parse and tokenize (0: one per core; 1: none)


class PackSession(Protocol):
    """What :func:`pack_records` needs of a command's session."""

    tally: Tally
    writer: io.RecordWriter | None
    rejects: io.RecordWriter | None
    kept_word: str

    def raw_records(self) -> Iterator[io.RawLine]: ...

    def parse(self, raw: io.RawLine) -> io.Line | None: ...

    def drop(self, line: dict[str, Any], by: str, reason: str, detail: str = "") -> None: ...

    def bad_record(self, line: io.Line, err: RecordError) -> None: ...


def pack_records(session: PackSession, settings: PackSettings) -> None:
    """Tokenize every record of ``session`` and write the packed sequences; counts
    sequences, tokens, packing_efficiency and tokens_per_s."""
    from dasd_cli.core.chat import tokenizer_fingerprint
    from dasd_cli.model.load import resolve_tokenizer
    from dasd_cli.store import TokenStoreWriter
    from dasd_cli.workers import default_workers

    s = settings
    tokenizer_path = str(resolve_tokenizer(s.tokenizer))
    fingerprint = tokenizer_fingerprint(_tokenizer(tokenizer_path))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dasd-pack-") as folder:
        store = TokenStoreWriter(Path(folder), columns=("input_ids",), per_row=("prompt_len",))
        ids: list[str] = []  # the kept samples' ids, in store order

        def store_or_drop(raw: io.RawLine, result: Tokenized) -> None:
            if result is None:
                _report_bad_line(session, raw, s.system_prompt)
                return
            session.tally.read += 1
            sid, input_ids, prompt_len = result
            if len(input_ids) > s.cutoff_len:
                record = io.parse_line(raw).record if session.rejects is not None else {}
                session.drop(record, "pack", "over_cutoff",
                             f"{len(input_ids)} tokens > --cutoff-len {s.cutoff_len}")
                return
            store.append({"input_ids": input_ids}, prompt_len=prompt_len)
            ids.append(sid)

        def write_sequences() -> None:
            store.close()
            _write_sequences(session, Path(folder), ids, s.cutoff_len, s.pack, fingerprint)

        chunks = _chunks(session.raw_records())
        head = list(itertools.islice(chunks, 2))
        workers = s.workers or default_workers()
        in_processes = len(head) == 2 and workers > 1  # one chunk only: no worker start-up
        record_loop(session.tally, itertools.chain(head, chunks), store_or_drop,
                    functools.partial(tokenize_chunk, tokenizer_path=tokenizer_path,
                                      system_prompt=s.system_prompt),
                    workers=workers if in_processes else 1, processes=True,
                    initializer=_init_worker if in_processes else None, finish=write_sequences)
    elapsed = time.perf_counter() - started
    tokens = session.tally.extra.get("tokens", 0)
    session.tally.extra["tokens_per_s"] = round(tokens / elapsed) if elapsed > 0 else None


def sample_id(record: dict[str, Any]) -> str:
    """The id a packed record lists for a sample (``ids``)."""
    value = record.get("id")
    if value is None:
        raise RecordError("record has no 'id'", reason="missing_field",
                          hint="packed records list the ids of their samples")
    return str(value)


def sample_fields(record: dict[str, Any], system_prompt: str | None
                  ) -> tuple[str, list[dict[str, str]], str]:
    """(id, prompt messages, response) of a response record, or the RecordError."""
    return sample_id(record), prompt_messages(record, system_prompt), response_text(record)


# --------------------------------------------------------------------------- tokenizing


@functools.lru_cache(maxsize=1)
def _tokenizer(path: str) -> Any:
    """The tokenizer at ``path``, loaded once per process (here, and in each worker)."""
    from dasd_cli.model.load import load_tokenizer

    return load_tokenizer(path)


def _init_worker() -> None:
    """A worker process: the parent handles Ctrl-C and SIGTERM and stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker; workers fill the cores


def tokenize_chunk(chunk: list[io.RawLine], *, tokenizer_path: str,
                   system_prompt: str | None) -> list[Tokenized]:
    """(id, int32 token ids, prompt length) per line, None where the line is unusable
    (the parent parses it again to report the error with its file and line)."""
    from dasd_cli.core.pack import encode_batch

    results: list[Tokenized] = [None] * len(chunk)
    todo = []
    for k, raw in enumerate(chunk):
        try:
            sid, messages, response = sample_fields(io.parse_line(raw).record, system_prompt)
        except RecordError:
            continue
        todo.append((k, sid, messages, response))
    encoded = encode_batch(_tokenizer(tokenizer_path),
                           [(messages, response) for _, _, messages, response in todo])
    for (k, sid, _, _), (input_ids, prompt_len) in zip(todo, encoded):
        results[k] = (sid, input_ids, prompt_len)
    return results


def _chunks(lines: Iterator[io.RawLine]) -> Iterator[list[io.RawLine]]:
    chunk: list[io.RawLine] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line.data)
        if len(chunk) >= TOKENIZE_BATCH or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _report_bad_line(session: PackSession, raw: io.RawLine, system_prompt: str | None) -> None:
    """A line a worker could not use: parse it here to raise (or skip) its exact error."""
    line = session.parse(raw)
    if line is None:
        return
    try:
        sample_fields(line.record, system_prompt)
    except RecordError as err:
        session.bad_record(line, err)
        return
    raise RuntimeError(f"a worker refused {raw.source}:{raw.line} but it parses here")


def _write_sequences(session: PackSession, folder: Path, ids: list[str], cutoff_len: int,
                     pack: bool, fingerprint: str) -> None:
    """Plan the sequences on the lengths, then write each from the tokens on disk."""
    from dasd_cli.core.pack import packed_record, plan_sequences
    from dasd_cli.store import TokenStore

    with TokenStore(folder) as store:
        members, report = plan_sequences(store.lengths(), cutoff_len, pack=pack)
        session.kept_word = "packed"
        session.tally.extra.update(sequences=report.sequences, tokens=report.tokens,
                                   packing_efficiency=round(report.efficiency, 4))
        prompt_lens = store.per_row["prompt_len"]
        assert session.writer is not None
        for sequence in members:
            indices = sequence.tolist()
            record = packed_record([store.row(i, "input_ids") for i in indices],
                                   [int(prompt_lens[i]) for i in indices],
                                   [ids[i] for i in indices], fingerprint)
            session.writer.write(record)
            session.tally.keep(len(indices))
