"""A slice of the released Superior-Reasoning data for the tests of `dasd import`.

Data rows {uuid, input, output, domain, meta} and Logprob rows {sample_uuid, token_ids,
logprobs}, whose tokens spell gpt-oss's harmony reply: reasoning, the channel switch,
the answer, <|return|>. The token ids are those of whichever tokenizer a test passes
(the embedded default's, or gpt-oss's own o200k_harmony built from quicktok-v1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from helpers import to_jsonl

ROWS = [
    ("3f1c0000-0000-4000-8000-000000000001", "math", "Find x if 2x = 10.",
     "We need to solve 2x = 10. Dividing both sides by 2 gives x = 5.", "x = 5"),
    ("3f1c0000-0000-4000-8000-000000000002", "instruction_following", "Write one word: hello.",
     "The user wants the single word hello, lower case.", "hello"),
    ("3f1c0000-0000-4000-8000-000000000003", "code", "Print 1 in Python.",
     "A single print call does it.", "```python\nprint(1)\n```"),
    ("3f1c0000-0000-4000-8000-000000000004", "science", "What is H2O?",
     "Water: two hydrogens, one oxygen.", "Water."),
]
MISSING = ROWS[2][0]     # no Logprob row
MISMATCH = ROWS[3][0]    # its Logprob row spells another text
BETWEEN = "<|end|><|start|>assistant<|channel|>final<|message|>"


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_parts(tokenizer, reasoning: str, answer: str) -> tuple[list[int], int, int]:
    """gpt-oss's reply as token ids: reasoning, channel switch, answer, <|return|>;
    also where the answer's tokens start and how many there are."""
    head = encode(tokenizer, reasoning) + encode(tokenizer, BETWEEN)
    tail = encode(tokenizer, answer)
    return head + tail + encode(tokenizer, "<|return|>"), len(head), len(tail)


def data_rows() -> list[dict[str, Any]]:
    return [{"uuid": uuid, "input": question, "output": f"<think>\n{reasoning}\n</think>\n\n{answer}",
             "domain": domain, "meta": orjson.dumps({"source": "slice", "n": i}).decode()}
            for i, (uuid, domain, question, reasoning, answer) in enumerate(ROWS)]


def logprob_rows(tokenizer) -> list[dict[str, Any]]:
    rows = []
    for uuid, _domain, _q, reasoning, answer in reversed(ROWS):  # not in the data's order
        if uuid == MISSING:
            continue
        if uuid == MISMATCH:
            reasoning = reasoning.replace("oxygen", "nitrogen")
        ids, _, _ = token_parts(tokenizer, reasoning, answer)
        rows.append({"sample_uuid": uuid, "token_ids": ids,
                     "logprobs": [-(k + 1) / 1000 for k in range(len(ids))]})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(to_jsonl(rows))
    return path


def check_slice(tokenizer, records: list[dict[str, Any]], err: str) -> None:
    assert "read 4, kept 2, dropped 2 (missing_logprobs 1, tokens_mismatch 1)" in err
    assert [r["id"] for r in records] == [ROWS[0][0], ROWS[1][0]]
    for record, (_uuid, _domain, question, reasoning, answer) in zip(records, ROWS):
        assert record["messages"] == [{"role": "user", "content": question}]
        assert record["response"] == f"<think>\n{reasoning}\n</think>\n\n{answer}"
        sampler = record["sampler"]
        assert sampler["model"] == "gpt-oss-120b" and sampler["logprobs_mode"] == "unknown"
        ids, answer_at, answer_len = token_parts(tokenizer, reasoning, answer)
        n_reason = len(encode(tokenizer, reasoning))
        # the kept tokens are the reasoning's and the answer's, with their own log-probs
        kept = list(range(n_reason)) + list(range(answer_at, answer_at + answer_len))
        assert sampler["logprobs"] == [-(k + 1) / 1000 for k in kept]
        # re-tokenizing the aligned response's parts gives the same token starts
        think_at = len("<think>\n")
        final_at = record["response"].index("</think>\n\n") + len("</think>\n\n")
        starts = [think_at + a for a, _ in tokenizer(reasoning, add_special_tokens=False,
                                                      return_offsets_mapping=True)["offset_mapping"]]
        starts += [final_at + a for a, _ in tokenizer(answer, add_special_tokens=False,
                                                       return_offsets_mapping=True)["offset_mapping"]]
        assert sampler["offsets"] == starts
        for k, offset in zip(kept, sampler["offsets"]):
            piece = tokenizer.decode([ids[k]])
            assert record["response"][offset:offset + len(piece)] == piece
