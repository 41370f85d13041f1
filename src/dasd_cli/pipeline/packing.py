"""``dasd pack``'s record work: tokenize response records, then pack them into sequences.

Records are tokenized as the student sees them in training (chat template prompt + raw
response + end of turn, core/chat.py) in batches: here with the fast tokenizer's own
threads, or with ``workers`` > 1 parsed and tokenized in that many processes, in input
order. Samples over ``cutoff_len`` are dropped (never truncated). The tokens go to an
on-disk store in ``$TMPDIR`` (4 bytes per token) as they come, and memory keeps only each
sample's id, length and prompt length. Best-fit decreasing runs on the lengths, and each
sequence is built by reading its samples' tokens back (DESIGN.md "Packed sequence").

On-policy samples (records with ``teacher_scores``, METHOD.md section 5) also carry the
sampler's and the teacher's log-prob of every response token into the packed records
(``sampler_logprobs``, ``teacher_logprobs``; two more columns of the store), aligned to
the packed tokens by their start characters; a sample whose tokens the student tokenizer
does not reproduce is dropped (reason ``tokens_misaligned``). Either every input record
is on-policy or none is.
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
from dasd_cli.core.onpolicy import ScoredSample, is_on_policy, scored_sample
from dasd_cli.core.tally import Tally
from dasd_cli.errors import RecordError
from dasd_cli.pipeline.loop import record_loop

TOKENIZE_BATCH = 256  # records per batched tokenizer call (and per chunk sent to a worker)
CHUNK_BYTES = 8 << 20  # a chunk also ends at this many input bytes (bounds worker memory)
STREAM_COLUMNS = ("sampler_logprobs", "teacher_logprobs")  # the on-policy log-prob columns
MISALIGNED = "tokens_misaligned"  # a tokenize result: the on-policy sample's tokens do not line up

# One sample, tokenized: (id, int32 token ids, prompt length, streams); None where the line
# is unusable. streams: None for an SFT sample; for an on-policy one the sampler's and the
# teacher's float32 log-prob arrays (core.onpolicy.token_streams), or MISALIGNED.
Tokenized = Optional[tuple[str, Any, int, Any]]


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
        # made at the first sample: on-policy samples add their log-prob columns
        stores: list[TokenStoreWriter] = []
        ids: list[str] = []  # the kept samples' ids, in store order

        def store_or_drop(raw: io.RawLine, result: Tokenized) -> None:
            if result is None:
                _report_bad_line(session, raw, s.system_prompt, fingerprint)
                return
            sid, input_ids, prompt_len, streams = result
            if not stores:
                stores.append(_token_store(Path(folder), on_policy=streams is not None))
            store = stores[0]
            on_policy = STREAM_COLUMNS[0] in store.columns
            if on_policy != (streams is not None):
                line = session.parse(raw)  # counts it as read
                if line is not None:
                    session.bad_record(line, RecordError(
                        "record " + ("lacks" if on_policy else "has") + " teacher_scores, unlike the first "
                        "record: one packed file is either on-policy or SFT data", reason="mixed_objectives",
                        hint="pack on-policy samples (dasd score --role teacher) and SFT samples apart"))
                return
            session.tally.read += 1
            if isinstance(streams, str):  # MISALIGNED
                record = io.parse_line(raw).record if session.rejects is not None else {}
                session.drop(record, "pack", MISALIGNED, "the student tokenizer does not reproduce the "
                             "sampled tokens (a non-canonical sample)")
                return
            if len(input_ids) > s.cutoff_len:
                record = io.parse_line(raw).record if session.rejects is not None else {}
                session.drop(record, "pack", "over_cutoff",
                             f"{len(input_ids)} tokens > --cutoff-len {s.cutoff_len}")
                return
            row = {"input_ids": input_ids}
            if streams is not None:
                row.update(zip(STREAM_COLUMNS, streams))
            store.append(row, prompt_len=prompt_len)
            ids.append(sid)

        def write_sequences() -> None:
            if not stores:
                stores.append(_token_store(Path(folder), on_policy=False))
            stores[0].close()
            _write_sequences(session, Path(folder), ids, s.cutoff_len, s.pack, fingerprint)

        chunks = _chunks(session.raw_records())
        head = list(itertools.islice(chunks, 2))
        workers = s.workers or default_workers()
        in_processes = len(head) == 2 and workers > 1  # one chunk only: no worker start-up
        record_loop(session.tally, itertools.chain(head, chunks), store_or_drop,
                    functools.partial(tokenize_chunk, tokenizer_path=tokenizer_path,
                                      system_prompt=s.system_prompt, fingerprint=fingerprint),
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


def sample_scores(record: dict[str, Any], response: str, fingerprint: str) -> ScoredSample | None:
    """The on-policy log-probs of a record with teacher_scores (checked against the packing
    tokenizer's ``fingerprint``), else None."""
    return scored_sample(record, response, fingerprint) if is_on_policy(record) else None


def _token_store(folder: Path, *, on_policy: bool) -> Any:
    """The store of the tokenized samples (and, on-policy, their two log-prob columns)."""
    from dasd_cli.store import TokenStoreWriter

    if not on_policy:
        return TokenStoreWriter(folder, columns=("input_ids",), per_row=("prompt_len",))
    return TokenStoreWriter(folder, columns=("input_ids",) + STREAM_COLUMNS, per_row=("prompt_len",),
                            dtypes={name: "float32" for name in STREAM_COLUMNS})


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


def tokenize_chunk(chunk: list[io.RawLine], *, tokenizer_path: str, system_prompt: str | None,
                   fingerprint: str) -> list[Tokenized]:
    """(id, int32 token ids, prompt length, streams) per line (:data:`Tokenized`), None
    where the line is unusable (the parent parses it again to report the error with its
    file and line). ``fingerprint``: the tokenizer's, which on-policy records must match."""
    from dasd_cli.core.onpolicy import token_streams
    from dasd_cli.core.pack import encode_batch, encode_batch_with_offsets

    tok = _tokenizer(tokenizer_path)
    results: list[Tokenized] = [None] * len(chunk)
    todo: list[tuple[int, str, list[dict[str, str]], str]] = []
    scored: list[tuple[int, str, list[dict[str, str]], str, ScoredSample]] = []
    for k, raw in enumerate(chunk):
        try:
            record = io.parse_line(raw).record
            sid, messages, response = sample_fields(record, system_prompt)
            sample = sample_scores(record, response, fingerprint)
        except RecordError:
            continue
        if sample is None:
            todo.append((k, sid, messages, response))
        else:
            scored.append((k, sid, messages, response, sample))
    encoded = encode_batch(tok, [(messages, response) for _, _, messages, response in todo])
    for (k, sid, _, _), (input_ids, prompt_len) in zip(todo, encoded):
        results[k] = (sid, input_ids, prompt_len, None)
    encoded_scored = encode_batch_with_offsets(tok, [(messages, response) for _, _, messages, response, _ in scored],
                                               [sample.response_tokens() for *_, sample in scored])
    for (k, sid, _, _, sample), (input_ids, prompt_len, offsets) in zip(scored, encoded_scored):
        streams = token_streams(sample, offsets, prompt_len, len(input_ids))
        results[k] = (sid, input_ids, prompt_len, MISALIGNED if streams is None else streams)
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


def _report_bad_line(session: PackSession, raw: io.RawLine, system_prompt: str | None,
                     fingerprint: str) -> None:
    """A line a worker could not use: parse it here to raise (or skip) its exact error."""
    line = session.parse(raw)
    if line is None:
        return
    try:
        _, _, response = sample_fields(line.record, system_prompt)
        sample_scores(line.record, response, fingerprint)
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
        on_policy = STREAM_COLUMNS[0] in store.columns
        assert session.writer is not None
        for sequence in members:
            indices = sequence.tolist()
            streams = [(store.row(i, STREAM_COLUMNS[0]), store.row(i, STREAM_COLUMNS[1])) for i in indices
                       ] if on_policy else None
            record = packed_record([store.row(i, "input_ids") for i in indices],
                                   [int(prompt_lens[i]) for i in indices],
                                   [ids[i] for i in indices], fingerprint, streams)
            session.writer.write(record)
            session.tally.keep(len(indices))
