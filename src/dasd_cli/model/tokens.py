"""Token-level facts every backend needs: character offsets of tokens, end-of-turn ids.

A sampled token sequence is not always the tokenizer's canonical tokenization of its own
text, so offsets come from the tokens themselves (their bytes for byte-level BPE, else
incremental decoding): they always index the decoded text, one per token.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from dasd_cli.core.chat import encode_ids, end_of_turn
from dasd_cli.errors import DasdError


def token_offsets(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[int]]:
    """The text of ``ids`` and the start character of each token in it.

    Byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3, Qwen): exact and linear,
    from each token's bytes; a token that starts inside a multi-byte character gets that
    character's index, as the tokenizer's own offset mapping does. Other tokenizers:
    incremental decoding (:func:`decoded_offsets`). Offsets are non-decreasing.
    """
    ids = list(ids)
    pieces = byte_level_pieces(tokenizer, ids)
    if pieces is not None:
        return byte_offsets(pieces)
    return decoded_offsets(tokenizer, ids)


def byte_offsets(pieces: list[bytes]) -> tuple[str, list[int]]:
    """The text of concatenated token bytes and each token's start character.

    A token starting inside a multi-byte character gets that character's index.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars = 0
    parts: list[str] = []
    offsets: list[int] = []
    for piece in pieces:
        offsets.append(chars)  # characters completed before this token's first byte
        part = decoder.decode(piece)
        parts.append(part)
        chars += len(part)
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts), offsets


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable stand-ins for the 256 byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


_BYTE_OF = _unicode_to_byte()


def byte_level_pieces(tokenizer: Any, ids: list[int]) -> list[bytes] | None:
    """Each token's bytes for a byte-level BPE tokenizer, else ``None``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in type(backend.decoder).__name__ + str(backend.decoder)[:40]:
        return None
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    pieces = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if token_id in added:
            pieces.append(added[token_id].encode("utf-8"))
            continue
        try:
            pieces.append(bytes(_BYTE_OF[ch] for ch in token))
        except KeyError:
            return None  # not the byte-level alphabet after all
    return pieces


def decoded_offsets(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[int]]:
    """Offsets by incremental decoding (a window of one emitted token before the new ones,
    as streaming detokenizers do), linear in the length. A token that ends inside a
    character emits nothing; it and the tokens completing the character share its start.
    """
    ids = list(ids)
    full = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    text: list[str] = []
    length = 0
    offsets: list[int] = []
    prefix_at, read_at = 0, 0  # window start; tokens before read_at are emitted
    for i in range(len(ids)):
        offsets.append(length)
        before = tokenizer.decode(ids[prefix_at:read_at], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
        after = tokenizer.decode(ids[prefix_at:i + 1], skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
        if after.endswith("\ufffd") or not after.startswith(before):
            continue  # an unfinished character: wait for the token that completes it
        new = after[len(before):]
        text.append(new)
        length += len(new)
        prefix_at, read_at = read_at, i + 1
    joined = "".join(text)
    if joined != full:
        if full.startswith(joined):  # ends inside a character (cut by max tokens)
            return full, offsets
        return _quadratic_offsets(tokenizer, ids, full)
    return full, offsets


def _quadratic_offsets(tokenizer: Any, ids: list[int], full: str) -> tuple[str, list[int]]:
    """Fallback for decoders that are not local: offset i = length of decode(ids[:i])."""
    offsets = []
    for i in range(len(ids)):
        part = tokenizer.decode(ids[:i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        while part and not full.startswith(part):
            part = part[:-1]
        offsets.append(len(part))
    return full, offsets


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """Token ids that end an assistant turn: eos ids of the tokenizer and generation config."""
    ids: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for value in (source if isinstance(source, (list, tuple)) else [source]):
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    eot = encode_ids(tokenizer, end_of_turn(tokenizer))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if eot and eot[0] in special and eot[0] not in ids:  # e.g. <|im_end|> when eos differs
        ids.append(eot[0])
    if not ids:
        raise DasdError("the model has no end-of-sequence token", hint="use a chat (instruct) model")
    return ids
