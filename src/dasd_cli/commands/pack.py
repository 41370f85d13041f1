"""``dasd pack``: tokenize response records and pack them into training sequences.

Reads response records, tokenizes each as the student sees it in training (chat
template prompt + raw response + end of turn, core/chat.py), drops samples over
``--cutoff-len`` (never truncates) and writes packed records (DESIGN.md "Packed sequence").

Scale: records are tokenized in batches on every core (the fast tokenizer's own
threads; ``--workers N`` instead parses and tokenizes in N processes, in input order);
the tokens go to an on-disk store in ``$TMPDIR`` (4 bytes per token) as they come, and
memory keeps only each sample's id, length and prompt length. Best-fit decreasing runs
on the lengths, and each sequence is built by reading its samples' tokens back.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dasd_cli import io
from dasd_cli.commands import common
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.errors import RecordError

TOKENIZE_BATCH = 256  # records per batched tokenizer call (and per chunk sent to a worker)
CHUNK_BYTES = 8 << 20  # a chunk also ends at this many input bytes (bounds worker memory)


@common.shared_options()
def pack_command(
    shared: common.Common,
    cutoff_len: Annotated[int, typer.Option(
        "--cutoff-len", metavar="L", min=1,
        help="Tokens per packed sequence. A sample longer than L is dropped (reason "
        "over_cutoff), never truncated.")] = 65536,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="The STUDENT tokenizer and chat template: a model or tokenizer folder, or a .gguf file "
        "(default: the embedded default model).", show_default=False)] = None,
    pack: Annotated[bool, typer.Option(
        "--pack/--no-pack",
        help="Pack several samples per sequence (global best-fit decreasing), or write "
        "one sample per sequence in input order.")] = True,
    system_prompt: common.SystemPrompt = None,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", min=0,
        help="1: parse here and tokenize on every core with the tokenizer's threads. N > 1: "
        "parse and tokenize in N processes (0: one per core), for machines where parsing "
        f"JSON on one core is the bottleneck. Input of one chunk ({TOKENIZE_BATCH} records) "
        "is always tokenized here.")] = 1,
) -> None:
    """Tokenize responses with the student's chat template and pack them into sequences.

    Writes records {input_ids, labels, position_ids, ids, tokenizer}: labels are -100
    except on each response and its end-of-turn token; position_ids restart at 0 per
    sample; tokenizer is the fingerprint of the student tokenizer and chat template
    (dasd train refuses data packed for another). Reads all input before writing
    (best-fit decreasing needs every length), keeping the tokens in a temporary store in
    $TMPDIR (4 bytes per token) and only per-sample lengths and ids in memory.
    """
    shared.options = {"cutoff_len": cutoff_len, "tokenizer": tokenizer, "pack": pack,
                      "system_prompt": system_prompt, "workers": workers}

    def body(session: common.Session) -> None:
        from dasd_cli.model.load import load_tokenizer, resolve_tokenizer
        from dasd_cli.core.chat import tokenizer_fingerprint
        from dasd_cli.workers import default_workers

        tokenizer_path = str(resolve_tokenizer(tokenizer))
        tok = load_tokenizer(tokenizer_path)
        fingerprint = tokenizer_fingerprint(tok)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dasd-pack-") as folder:
            ids = _tokenize_into_store(session, Path(folder), tok, tokenizer_path, system_prompt,
                                       cutoff_len, workers or default_workers())
            _write_sequences(session, Path(folder), ids, cutoff_len, pack, fingerprint)
        elapsed = time.perf_counter() - started
        tokens = session.tally.extra.get("tokens", 0)
        session.tally.extra["tokens_per_s"] = round(tokens / elapsed) if elapsed > 0 else None

    common.run_command("pack", shared, body)


def sample_id(record: dict) -> str:
    """The id a packed record lists for a sample (``ids``)."""
    value = record.get("id")
    if value is None:
        raise RecordError("record has no 'id'", reason="missing_field",
                          hint="packed records list the ids of their samples")
    return str(value)


def sample_fields(record: dict, system_prompt: str | None) -> tuple[str, list[dict[str, str]], str]:
    """(id, prompt messages, response) of a response record, or the RecordError."""
    return sample_id(record), prompt_messages(record, system_prompt), response_text(record)


# --------------------------------------------------------------------------- tokenizing


_worker: dict[str, Any] = {}  # this process's tokenizer and --system-prompt


def _set_tokenizer(tok: Any, system_prompt: str | None) -> None:
    _worker.update(tok=tok, system_prompt=system_prompt)


def _init_worker(tokenizer_path: str, system_prompt: str | None) -> None:
    """A worker process: the parent handles Ctrl-C and SIGTERM and stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker; workers fill the cores
    from dasd_cli.model.load import load_tokenizer

    _set_tokenizer(load_tokenizer(tokenizer_path), system_prompt)


def _tokenize_chunk(chunk: list[io.RawLine]) -> list[tuple[str, Any, int] | None]:
    """(id, int32 token ids, prompt length) per line, None where the line is unusable
    (the parent parses it again to report the error with its file and line)."""
    from dasd_cli.core.pack import encode_batch

    results: list[tuple[str, Any, int] | None] = [None] * len(chunk)
    todo = []
    for k, raw in enumerate(chunk):
        try:
            sid, messages, response = sample_fields(io.parse_line(raw).record, _worker["system_prompt"])
        except RecordError:
            continue
        todo.append((k, sid, messages, response))
    encoded = encode_batch(_worker["tok"], [(messages, response) for _, _, messages, response in todo])
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


def _tokenize_into_store(session: common.Session, folder: Path, tok: Any, tokenizer_path: str,
                         system_prompt: str | None, cutoff_len: int, workers: int) -> list[str]:
    """Parse and tokenize every input record (in order) into a token store in ``folder``,
    keeping those that fit; returns the kept samples' ids, in store order."""
    from dasd_cli.store import TokenStoreWriter
    from dasd_cli.workers import ordered_map

    store = TokenStoreWriter(folder, columns=("input_ids",), per_row=("prompt_len",))
    ids: list[str] = []
    chunks = _chunks(session.raw_records())
    head = list(itertools.islice(chunks, 2))
    chunks = itertools.chain(head, chunks)
    if len(head) < 2 or workers <= 1:  # one chunk only: no worker start-up
        _set_tokenizer(tok, system_prompt)
        results = ordered_map(_tokenize_chunk, chunks, workers=1)
    else:
        results = ordered_map(_tokenize_chunk, chunks, workers=workers,
                              initializer=_init_worker, initargs=(tokenizer_path, system_prompt))
    for chunk, encoded in results:
        for raw, result in zip(chunk, encoded):
            if result is None:
                _report_bad_line(session, raw, system_prompt)
                continue
            session.tally.read += 1
            sid, input_ids, prompt_len = result
            if len(input_ids) > cutoff_len:
                record = io.parse_line(raw).record if session.rejects is not None else {}
                session.drop(record, "pack", "over_cutoff",
                             f"{len(input_ids)} tokens > --cutoff-len {cutoff_len}")
                continue
            store.append({"input_ids": input_ids}, prompt_len=prompt_len)
            ids.append(sid)
    store.close()
    return ids


def _report_bad_line(session: common.Session, raw: io.RawLine, system_prompt: str | None) -> None:
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


def _write_sequences(session: common.Session, folder: Path, ids: list[str], cutoff_len: int,
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
