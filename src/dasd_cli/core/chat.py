"""Prompts and responses under a tokenizer's chat template.

One rule everywhere (sample, filter, score, pack): the prompt is rendered by the chat
template with the generation prompt, and the response is appended as raw text followed
by the template's end-of-turn text. The final assistant turn is never rendered by the
template itself, because templates that strip ``<think>`` from history (Qwen3-style)
would strip it from the training target too.

Prompt, response and end-of-turn are tokenized separately and concatenated, so every
response token has a character offset into the response text and the token counts
match what training sees. ``tokenizer`` is any object with the transformers tokenizer
API that :class:`Tokenizer` lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dasd_cli.errors import RecordError

IGNORE_INDEX = -100  # label of a token that carries no loss (prompt tokens, padding)
_SENTINEL = "\x00DASD-END-OF-TURN-PROBE\x00"


class Tokenizer(Protocol):
    """What dasd uses of a transformers tokenizer (``PreTrainedTokenizerBase``)."""

    @property
    def eos_token(self) -> str | None: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool = False) -> str: ...

    def __call__(self, text: str | list[str], *, add_special_tokens: bool,
                 return_offsets_mapping: bool = False) -> Mapping[str, Any]: ...

    def get_vocab(self) -> dict[str, int]: ...


def prompt_messages(record: dict[str, Any], system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages of a prompt or response record (``messages`` or ``prompt``).

    ``messages`` wins when a record has both: a response record written by ``dasd sample``
    keeps its prompt's ``prompt`` and carries the ``messages`` the teacher was sent, system
    turn included (the user turn of those messages is that ``prompt``).
    ``system_prompt`` is added as a first system turn where the messages have none.
    """
    messages = record.get("messages")
    if messages is None:
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise RecordError("record has neither 'messages' nor 'prompt'", reason="missing_field",
                              hint="a prompt record needs 'messages' [{role, content}] or 'prompt' (str)")
        messages = [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise RecordError("'messages' must be a list of {role, content} objects",
                          reason="bad_field")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def response_text(record: dict[str, Any]) -> str:
    """The record's ``response`` string, or a RecordError naming the problem."""
    response = record.get("response")
    if not isinstance(response, str):
        raise RecordError("record has no 'response' string", reason="missing_field",
                          hint="this command reads response records, as written by `dasd sample`")
    return response


def render_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text up to where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer: Tokenizer) -> str:
    """The text the template writes after an assistant message (e.g. ``<|im_end|>\\n``).

    Found by rendering a probe conversation; cached on the tokenizer object.
    """
    cached = getattr(tokenizer, "_dasd_end_of_turn", None)
    if cached is not None:
        return cached
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    at = text.rfind(_SENTINEL)
    eot = text[at + len(_SENTINEL):] if at >= 0 else (tokenizer.eos_token or "")
    try:
        tokenizer._dasd_end_of_turn = eot  # type: ignore[attr-defined]  # a cache the class does not declare
    except AttributeError:  # pragma: no cover - slotted tokenizer objects
        pass
    return eot


def tokenize_with_offsets(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` (no special tokens added) and each token's start character."""
    if not text:
        return [], []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [int(start) for start, _ in enc["offset_mapping"]]
    return ids, offsets


def encode_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Encoded:
    """A prompt + response under a chat template, ready to score or train on."""

    input_ids: list[int]
    prompt_len: int  # tokens of context before the response (no loss there)
    response_len: int  # tokens of the response text proper
    response_offsets: list[int]  # start character of each response token in the response

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_example(tokenizer: Tokenizer, messages: list[dict[str, str]], response: str, *,
                   add_end_of_turn: bool = True,
                   response_tokens: tuple[list[int], list[int]] | None = None) -> Encoded:
    """Tokenize prompt + response (+ end of turn) the way dasd scores and trains.

    ``response_tokens`` (ids, start characters) are the response's tokens as a model
    sampled them: used as they are instead of tokenizing ``response`` again, which gives
    other tokens when a sample is not its tokenizer's own tokenization of its text.
    """
    prompt_text = render_prompt(tokenizer, messages)
    prompt_ids = encode_ids(tokenizer, prompt_text)
    if response_tokens is not None:
        response_ids, offsets = list(response_tokens[0]), list(response_tokens[1])
    else:
        response_ids, offsets = tokenize_with_offsets(tokenizer, response)
    end_text = end_of_turn(tokenizer) if add_end_of_turn else ""
    end_ids = encode_ids(tokenizer, end_text)
    return Encoded(prompt_ids + response_ids + end_ids, len(prompt_ids), len(response_ids), offsets)


def count_training_tokens(tokenizer: Tokenizer, messages: list[dict[str, str]], response: str) -> int:
    """Length of the full training sequence for one sample (what --max-tokens limits)."""
    return len(encode_example(tokenizer, messages, response))


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the vocabulary (token -> id, added tokens included) and chat template.

    Two tokenizers with the same fingerprint turn the same conversation into the same ids,
    so packed data made with one trains correctly under the other. Cached on the object.
    """
    cached = getattr(tokenizer, "_dasd_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        digest.update(f"{index}\x1f{token}\x1e".encode("utf-8", "surrogatepass"))
    template = getattr(tokenizer, "chat_template", None)
    digest.update(json.dumps(template, sort_keys=True).encode("utf-8"))
    fingerprint = "sha256:" + digest.hexdigest()[:16]
    try:
        tokenizer._dasd_fingerprint = fingerprint  # type: ignore[attr-defined]  # a cache the class does not declare
    except AttributeError:  # pragma: no cover - slotted tokenizer objects
        pass
    return fingerprint
