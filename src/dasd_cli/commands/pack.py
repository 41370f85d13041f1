"""``dasd pack``: tokenize response records and pack them into training sequences.

Reads response records, tokenizes each as the student sees it in training (chat
template prompt + raw response + end of turn, core/chat.py), drops samples over
``--cutoff-len`` (never truncates) and writes DESIGN.md packed records.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dasd_cli import io
from dasd_cli.commands import common
from dasd_cli.core.chat import prompt_messages, response_text
from dasd_cli.errors import RecordError

TOKENIZE_BATCH = 256  # records per batched tokenizer call


def pack_command(
    inputs: common.Inputs = None,
    cutoff_len: Annotated[int, typer.Option(
        "--cutoff-len", metavar="L", min=1,
        help="Tokens per packed sequence. A sample longer than L is dropped (reason "
        "over_cutoff), never truncated.")] = 65536,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", metavar="PATH",
        help="The STUDENT tokenizer and chat template: a model folder or .gguf file "
        "(default: the embedded default model).", show_default=False)] = None,
    pack: Annotated[bool, typer.Option(
        "--pack/--no-pack",
        help="Pack several samples per sequence (global best-fit decreasing), or write "
        "one sample per sequence in input order.")] = True,
    system_prompt: Annotated[Optional[str], typer.Option(
        "--system-prompt", metavar="TEXT",
        help="System turn added where a record has none (use the same value as `dasd sample` "
        "and `dasd filter`).", show_default=False)] = None,
    output: common.Output = None,
    compress: common.Compress = "auto",
    rejects: common.Rejects = None,
    on_error: common.OnError = "fail",
    stats: common.Stats = None,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Tokenize responses with the student's chat template and pack them into sequences.

    Writes records {input_ids, labels, position_ids, ids}: labels are -100 except on
    each response and its end-of-turn token; position_ids restart at 0 per sample.
    Reads all input before writing (best-fit decreasing needs every length).
    """
    options = {"cutoff_len": cutoff_len, "tokenizer": tokenizer, "pack": pack,
               "system_prompt": system_prompt}
    shared = common.Common(inputs=inputs, output=output, compress=compress, quiet=quiet,
                           stats=stats, rejects=rejects, on_error=on_error, debug=debug,
                           options=options)

    def body(session: common.Session) -> None:
        from dasd_cli.backends.models import load_tokenizer
        from dasd_cli.core.pack import SampleBuffer

        tok = load_tokenizer(tokenizer)
        buffer = SampleBuffer()
        batch: list[tuple[io.Line, list[dict[str, str]], str]] = []
        for line in session.records():
            try:
                sample_id(line.record)
                messages = prompt_messages(line.record, system_prompt)
                response = response_text(line.record)
            except RecordError as err:
                session.bad_record(line, err)
                continue
            batch.append((line, messages, response))
            if len(batch) >= TOKENIZE_BATCH:
                _tokenize(session, tok, batch, buffer, cutoff_len)
                batch = []
        _tokenize(session, tok, batch, buffer, cutoff_len)

        records, report = buffer.packed(cutoff_len, pack=pack)
        session.kept_word = "packed"
        session.tally.extra.update(sequences=report.sequences, tokens=report.tokens,
                                   packing_efficiency=round(report.efficiency, 4))
        assert session.writer is not None
        for record in records:
            session.writer.write(record)
            session.tally.keep(len(record["ids"]))

    common.run_command("pack", shared, body)


def sample_id(record: dict) -> str:
    """The id a packed record lists for a sample (``ids``)."""
    value = record.get("id")
    if value is None:
        raise RecordError("record has no 'id'", reason="missing_field",
                          hint="packed records list the ids of their samples")
    return str(value)


def _tokenize(session: common.Session, tok: object, batch: list, buffer: object,
              cutoff_len: int) -> None:
    """Tokenize one batch; keep samples that fit, drop the rest as over_cutoff."""
    from dasd_cli.core.pack import encode_batch

    encoded = encode_batch(tok, [(messages, response) for _, messages, response in batch])
    for (line, _, _), (input_ids, prompt_len) in zip(batch, encoded):
        if len(input_ids) > cutoff_len:
            session.drop(line, "pack", "over_cutoff", f"{len(input_ids)} tokens > --cutoff-len {cutoff_len}")
        else:
            buffer.add(sample_id(line.record), input_ids, prompt_len)  # type: ignore[attr-defined]
