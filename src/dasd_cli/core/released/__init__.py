"""The paper authors' released data as dasd response records (``dasd import``).

Superior-Reasoning-SFT-gpt-oss-120b rows hold ``uuid``, ``input`` (the prompt, a
string), ``output`` (the gpt-oss-120b response, ``<think>REASONING</think>ANSWER``),
``domain`` and ``meta`` (a string). Its companion ...-Logprob rows hold ``sample_uuid``,
``token_ids`` and ``logprobs``: gpt-oss's own tokens of the response and their
log-probabilities. This module turns one row into a response record (DESIGN.md "Released
data") and lays
the log-probs over the record's ``response``: the tokens' text (decoded by the caller)
is brought to the same canonical form as ``output``, and each token moves with its text
(the ``--normalize harmony`` logic); tokens of channel delimiters are dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from dasd_cli.core.filters.harmony import Segment, normalize_harmony_text, remap_tokens
from dasd_cli.core.filters.structure import THINK_CLOSE, THINK_OPEN
from dasd_cli.core.provenance import LEGACY_SAMPLER, SAMPLER, sampler_block
from dasd_cli.core.sampling import derived_id
from dasd_cli.errors import RecordError

TEACHER_MODEL = "gpt-oss-120b"
# The released domain labels and dasd's (DESIGN.md "Prompt": math | code | science |
# instruction | other).
DOMAINS = {"math": "math", "code": "code", "coding": "code", "science": "science",
           "instruction_following": "instruction", "instruction-following": "instruction",
           "instruction": "instruction", "if": "instruction"}
# gpt-oss begins its reply inside the analysis channel: the released token_ids start with
# the reasoning text itself ("We need to ..."), the header being part of the prompt.
ANALYSIS_HEADER = "<|channel|>analysis<|message|>"


def map_domain(value: Any) -> str:
    """dasd's domain for a released label; unknown labels are ``other``."""
    return DOMAINS.get(str(value).strip().lower(), "other") if value is not None else "other"


def prompt_messages(value: Any) -> list[dict[str, str]]:
    """The prompt as messages: a string is one user turn, unless it holds a JSON list of
    {role, content} turns (or the row already carries such a list)."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = None
        if _is_messages(parsed):
            return [{"role": m["role"], "content": m["content"]} for m in parsed]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if _is_messages(value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise RecordError("field 'input' is not a string or a list of {role, content} messages",
                      reason="bad_input")


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in value))


def meta_value(value: Any) -> Any:
    """``meta`` as released is a string; a JSON object in it is kept as that object."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def canonical_text(text: str) -> tuple[str, list[Segment]]:
    """``text`` in the canonical ``<think>\\nREASONING\\n</think>\\n\\nANSWER`` form and the
    kept segments (source start, source end, destination start).

    Harmony channels are rewritten first. Whitespace around the reasoning and the answer
    is trimmed; text without a think block is kept whole.
    """
    harmony = normalize_harmony_text(text)
    if harmony is not None:
        inner, first = harmony
        outer, second = canonical_text(inner)
        return outer, _compose(first, second)
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    if start < 0 or end < 0 or text[:start].strip():
        return text, [(0, len(text), 0)]
    body = _trimmed(text, start + len(THINK_OPEN), end)
    answer = _trimmed(text, end + len(THINK_CLOSE), len(text))
    head, middle = "<think>\n", "\n</think>\n\n"
    out = head + text[body[0]:body[1]] + middle + text[answer[0]:answer[1]]
    segments = [(body[0], body[1], len(head)),
                (answer[0], answer[1], len(head) + body[1] - body[0] + len(middle))]
    return out, [s for s in segments if s[1] > s[0]]


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _compose(first: list[Segment], second: list[Segment]) -> list[Segment]:
    """Segments of the composition: source -> (first) -> middle -> (second) -> destination."""
    out: list[Segment] = []
    for s_start, s_end, s_dest in second:
        for f_start, f_end, f_dest in first:
            lo, hi = max(s_start, f_dest), min(s_end, f_dest + f_end - f_start)
            if lo < hi:
                out.append((f_start + lo - f_dest, f_start + hi - f_dest, s_dest + lo - s_start))
    return out


def align_tokens(response: str, decoded: str, offsets: list[int],
                 logprobs: list[float]) -> tuple[list[float], list[int]] | str:
    """The teacher log-probs and offsets over ``response``, or why they do not fit.

    ``decoded`` is the text of the released ``token_ids`` and ``offsets`` the start of each
    token in it. The decoded text is brought to the canonical form; it must then equal
    ``response``. Returns a one-line mismatch detail otherwise.
    """
    if "<|channel|>" in decoded and not decoded.lstrip().startswith(("<|channel|>", "<|start|>")):
        decoded = ANALYSIS_HEADER + decoded
        offsets = [o + len(ANALYSIS_HEADER) for o in offsets]
    text, segments = canonical_text(decoded)
    if text != response:
        at = next((i for i, (a, b) in enumerate(zip(text, response)) if a != b),
                  min(len(text), len(response)))
        return (f"decoded tokens differ from output at character {at}: "
                f"tokens {text[at:at + 30]!r} vs output {response[at:at + 30]!r}")
    return remap_tokens(logprobs, offsets, segments)


def to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A response record (no log-probs yet) for one released data row."""
    uuid = row.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise RecordError("missing field 'uuid' (a released data row needs uuid, input, output)",
                          reason="missing_field")
    for name in ("input", "output"):
        if name not in row or row[name] is None:
            raise RecordError(f"missing field {name!r}", reason="missing_field")
    if not isinstance(row["output"], str):
        raise RecordError("field 'output' is not a string", reason="bad_output")
    messages = prompt_messages(row["input"])
    response, _ = canonical_text(row["output"])
    record: dict[str, Any] = {k: v for k, v in row.items()
                              if k not in ("uuid", "input", "output", "domain", "meta")}
    domain = map_domain(row.get("domain"))
    record.update({"id": uuid, "prompt_id": derived_id(messages), "uuid": uuid,
                   "messages": messages, "response": response, "finish_reason": "stop",
                   "domain": domain})
    if row.get("domain") is not None and domain != row["domain"]:
        record["source_domain"] = row["domain"]
    if "meta" in row:
        record["meta"] = meta_value(row["meta"])
    record[SAMPLER] = {"model": TEACHER_MODEL}
    return record


def add_logprobs(record: dict[str, Any], logprobs: list[float], offsets: list[int],
                 mode: str) -> dict[str, Any]:
    """``record`` with its sampler's (the teacher's) log-probs and offsets."""
    sampler = {**(sampler_block(record) or {}), "logprobs": logprobs, "offsets": offsets,
               "logprobs_mode": mode}
    return {**{k: v for k, v in record.items() if k != LEGACY_SAMPLER}, SAMPLER: sampler}
