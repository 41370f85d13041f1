"""dasd filter: the truncated, structure, length and harmony units, and the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import parse_records, to_jsonl
from dasd_cli.core.filters.harmony import normalize_harmony, normalize_harmony_text
from dasd_cli.core.filters.structure import StructureFilter
from dasd_cli.core.filters.truncated import TruncatedFilter
from dasd_cli.errors import RecordError


def rec(response: str, **extra) -> dict:
    return {"id": "r", "messages": [{"role": "user", "content": "q"}], "response": response,
            "finish_reason": "stop", **extra}


def test_truncated() -> None:
    assert TruncatedFilter().check(rec("x", finish_reason="length")).reason == "truncated"
    assert TruncatedFilter().check(rec("x")) is None
    assert TruncatedFilter(invert=True).check(rec("x", finish_reason="length")) is None
    assert TruncatedFilter(invert=True).check(rec("x")).reason == "finished"


@pytest.mark.parametrize("response,reason", [
    ("<think>\nwork\n</think>\n\n42", None),
    ("just an answer", "no_think"),
    ("<think>\nwork, never closed", "unclosed_think"),
    ("<think>\n  \n</think>\n\n42", "empty_think"),
    ("<think>\nwork\n</think>\n\n   ", "no_answer"),
    ("<think>a</think><think>b</think>c", "nested_think"),
    ("preamble <think>a</think> b", "no_think"),
    ("</think> odd <think>", "unclosed_think"),
])
def test_require_think(response: str, reason: str | None) -> None:
    verdict = StructureFilter(require_think=True).check(rec(response))
    assert (verdict.reason if verdict else None) == reason


@pytest.mark.parametrize("response", [
    "<think>x</think>\n<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>",
    "I will call <function=search>{\"q\": 1}</function>",
])
def test_tool_calls_dropped(response: str) -> None:
    verdict = StructureFilter().check(rec(response))
    assert verdict is not None and verdict.reason == "tool_call"


@pytest.mark.parametrize("seed", range(200))
def test_tool_call_prefilter_passes_every_match(seed: int) -> None:
    """The substring pre-check never rules out a response a default pattern matches: every
    kind of marker, after few or many "<", among near misses."""
    import random
    import re

    from dasd_cli.core.filters.structure import DEFAULT_TOOL_CALL_PATTERNS, _may_call

    rng = random.Random(seed)
    markers = ("<|call|>", "to=functions.get", "to=python", "to=browser.open", "<tool_call>",
               "</tool_call>", "<function=f>", "<|tool_call_begin|>", "<|tool_calls_section_begin|>")
    near = ("<", "x < y", "to", "=", "to =", "functions.f", "<|call", "tool_call", "<functio", "/",
            "<tool", "function=f>", " ", "a")
    parts = [rng.choice(near) for _ in range(rng.randint(0, 40))]
    if seed % 3:
        parts.insert(rng.randint(0, len(parts)), markers[seed % len(markers)])
    text = "x < 1, " * rng.randint(0, 12) + "".join(parts)
    found = re.search("|".join(f"(?:{p})" for p in DEFAULT_TOOL_CALL_PATTERNS), text)
    assert _may_call(text) or found is None, text
    verdict = StructureFilter().check(rec(text))
    assert (verdict is not None and verdict.reason == "tool_call") == (found is not None), text


def test_tool_calls_field_and_custom_pattern() -> None:
    assert StructureFilter().check(rec("fine", tool_calls=[{"id": 1}])).reason == "tool_call"
    assert StructureFilter(tool_call_patterns=[r"CALL\("]).check(rec("x CALL(1)")).reason == "tool_call"
    assert StructureFilter(tool_call_patterns=[]).check(rec("<tool_call>")) is None


def test_missing_response_is_a_record_error() -> None:
    with pytest.raises(RecordError) as info:
        StructureFilter().check({"id": "x"})
    assert info.value.reason == "missing_field"


def test_harmony_with_special_tokens() -> None:
    raw = ("<|channel|>analysis<|message|>Let me add 2 and 2.<|end|>"
           "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>")
    text, _ = normalize_harmony_text(raw)
    assert text == "<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4."
    assert StructureFilter(require_think=True).check(rec(text)) is None


def test_harmony_stripped_form() -> None:
    text, _ = normalize_harmony_text("analysisThink hard.assistantfinalDone.")
    assert text == "<think>\nThink hard.\n</think>\n\nDone."
    assert normalize_harmony_text("plain text") is None


@pytest.mark.parametrize("block", ["sampler", "teacher"])  # teacher: files of earlier versions
def test_harmony_carries_logprobs_and_offsets(block) -> None:
    raw = "<|channel|>analysis<|message|>ab cd<|end|><|start|>assistant<|channel|>final<|message|>ef<|return|>"
    pieces = ["<|channel|>", "analysis", "<|message|>", "ab", " cd", "<|end|>", "<|start|>", "assistant",
              "<|channel|>", "final", "<|message|>", "ef", "<|return|>"]
    offsets, pos = [], 0
    for piece in pieces:
        offsets.append(pos)
        pos += len(piece)
    assert "".join(pieces) == raw
    logprobs = [-float(i) for i in range(len(pieces))]
    out = normalize_harmony(rec(raw, **{block: {"logprobs": logprobs, "offsets": offsets}}))
    response = out["response"]
    kept = out[block]  # rewritten under the name it came with
    assert set(out) & {"sampler", "teacher"} == {block}
    assert response == "<think>\nab cd\n</think>\n\nef"
    assert kept["logprobs"] == [-3.0, -4.0, -11.0]  # "ab", " cd", "ef"
    assert [response[o:o + 2] for o in kept["offsets"]] == ["ab", " c", "ef"]


def test_command_counts_reasons_and_writes_rejects(cli, tmp_path: Path) -> None:
    records = [rec("<think>w</think>\n\nok", id="a"), rec("x", id="b", finish_reason="length"),
               rec("no think", id="c"), rec("<tool_call>f()</tool_call>", id="d")]
    rejects = tmp_path / "rej.jsonl"
    code, out, err = cli(["filter", "--require-think", "--rejects", str(rejects), "-"], stdin=to_jsonl(records))
    assert code == 0, err
    assert [r["id"] for r in parse_records(out)] == ["a"]
    assert "read 4, kept 1, dropped 3" in err
    got = {r["id"]: (r["rejected"]["by"], r["rejected"]["reason"]) for r in parse_records(rejects.read_bytes())}
    assert got == {"b": ("truncated", "truncated"), "c": ("structure", "no_think"), "d": ("structure", "tool_call")}


def test_command_missing_response_names_line(cli, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(to_jsonl([rec("fine"), {"id": "no-response"}]))
    code, _out, err = cli(["filter", str(path)])
    assert code == 1 and f"({path}:2)" in err and "no 'response'" in err
    code, out, err = cli(["filter", "--on-error", "skip", str(path)])
    assert code == 0 and "skipped 1 (missing_field 1)" in err and len(parse_records(out)) == 1


def test_tokenizer_without_cutoff_len_is_usage_error(cli) -> None:
    code, _out, err = cli(["filter", "--tokenizer", "x", "-"], stdin=b"")
    assert code == 2 and "--cutoff-len" in err


def test_max_tokens_is_a_hidden_deprecated_alias_of_cutoff_len(cli) -> None:
    code, out, _err = cli(["filter", "--help"])
    assert "--cutoff-len" in out.decode() and "--max-tokens" not in out.decode()
    code, _out, err = cli(["filter", "--cutoff-len", "10", "--max-tokens", "20", "-"], stdin=b"")
    assert code == 2 and "--cutoff-len 10 and --max-tokens 20 disagree" in err
    assert [line for line in err.splitlines() if "deprecated" in line] == [
        ("dasd filter: warning: --max-tokens is deprecated; use --cutoff-len (the same training-sequence "
         "cap as dasd pack's)")]


@pytest.mark.slow
def test_length_counts_the_full_training_sequence(cli) -> None:
    from dasd_cli.model.load import load_tokenizer
    from dasd_cli.core.chat import encode_example

    tokenizer = load_tokenizer(None)
    short, long = rec("Short answer."), rec("word " * 300)
    n_short = len(encode_example(tokenizer, short["messages"], short["response"]))
    n_long = len(encode_example(tokenizer, long["messages"], long["response"]))
    assert n_short < n_long
    for flag in ("--cutoff-len", "--max-tokens"):  # the old name still works, with a warning
        code, out, err = cli(["filter", "--no-repetition", flag, str(n_short), "-"],
                             stdin=to_jsonl([short, long]))
        assert code == 0, err
        assert [r["response"] for r in parse_records(out)] == ["Short answer."]
        assert "too_long 1" in err
        assert ("deprecated" in err) == (flag == "--max-tokens")
    # exactly at the limit is kept: the limit counts the whole sequence, template included
    code, out, _ = cli(["filter", "--cutoff-len", str(n_short - 1), "-"], stdin=to_jsonl([short]))
    assert parse_records(out) == []


def test_repetition_and_verify_in_the_command(cli) -> None:
    loop = "Let me recompute the sum of the two numbers once more. " * 40
    records = [
        rec("<think>\n2 plus 2 is 4.\n</think>\n\nThe answer is \\boxed{4}.", id="right", reference={"answer": "4"}),
        rec("<think>\n2 plus 2 is 5.\n</think>\n\nThe answer is \\boxed{5}.", id="wrong", reference={"answer": "4"}),
        rec("<think>\nhmm\n</think>\n\nThe answer is (B).", id="mc", reference={"choice": "B"}),
        rec("<think>\n" + loop + "\n</think>\n\n4", id="loop"),
        rec("An essay with no reference.", id="free"),
    ]
    code, out, err = cli(["filter", "--verify", "-"], stdin=to_jsonl(records))
    assert code == 0, err
    assert [r["id"] for r in parse_records(out)] == ["right", "mc", "free"]
    assert "wrong_answer 1" in err and "dropped 2" in err
    assert any(f"{reason} 1" in err for reason in ("looping_tail", "top_ngram", "duplicate_ngrams"))
    assert "verified 3" in err and "unverified 1" in err
    # thresholds are overridable by name; unknown names are usage errors
    code, out, err = cli(["filter", "--repetition-threshold", "loop_min_repeats=1000",
                          "--repetition-threshold", "max_duplicate_5gram_fraction=1",
                          "--repetition-threshold", "max_top_2gram_fraction=1",
                          "--repetition-threshold", "max_top_3gram_fraction=1",
                          "--repetition-threshold", "max_top_4gram_fraction=1",
                          "--repetition-threshold", "max_duplicate_6gram_fraction=1",
                          "--repetition-threshold", "max_duplicate_7gram_fraction=1",
                          "--repetition-threshold", "max_duplicate_8gram_fraction=1",
                          "--repetition-threshold", "max_duplicate_9gram_fraction=1",
                          "--repetition-threshold", "max_duplicate_10gram_fraction=1", "-"],
                         stdin=to_jsonl(records[3:4]))
    assert code == 0 and len(parse_records(out)) == 1, err
    code, _out, err = cli(["filter", "--repetition-threshold", "nope=1", "-"], stdin=b"")
    assert code == 2 and "max_duplicate_5gram_fraction" in err
    for bad in ("loop_min_bytes=-1", "max_top_2gram_fraction=nan", "loop_min_repeats=0.5"):
        code, _out, err = cli(["filter", "--repetition-threshold", bad, "-"], stdin=b"")
        assert code == 2 and "must be at least" in err, (bad, err)


def test_workers_keep_order_outcomes_and_counts(cli, tmp_path: Path) -> None:
    """--workers N checks in threads: the same records, rejects and counts, in input order,
    as --workers 1 (records cross several thread tasks; bad records are skipped in place)."""
    loop = "Let me recompute the sum of the two numbers once more. " * 40
    records = []
    for i in range(70):
        kind = i % 7
        if kind == 0:
            records.append(rec("<think>\n" + loop + "\n</think>\n\n4", id=f"loop{i}"))
        elif kind == 1:
            records.append({"id": f"bad{i}"})  # no response: skipped under --on-error skip
        elif kind == 2:
            records.append(rec(f"<think>\n2 plus {i} is {i + 2}.\n</think>\n\n\\boxed{{{i + 2}}}",
                               id=f"right{i}", reference={"answer": str(i + 2)}))
        elif kind == 3:
            records.append(rec(f"<think>\nhmm\n</think>\n\n\\boxed{{{i}}}", id=f"wrong{i}",
                               reference={"answer": str(i + 1)}))
        elif kind == 4:
            records.append(rec("x", id=f"cut{i}", finish_reason="length"))
        else:
            records.append(rec(f"<think>\nStep {i}: the value is {i * i}.\n</think>\n\nIt is {i * i}.",
                               id=f"ok{i}"))
    outputs = {}
    for workers in ("1", "4"):
        for verify in ([], ["--verify"]):
            rejects = tmp_path / f"rej{workers}{len(verify)}.jsonl"
            code, out, err = cli(["filter", "--on-error", "skip", "--workers", workers, *verify,
                                  "--rejects", str(rejects), "-"], stdin=to_jsonl(records))
            assert code == 0, err
            summary = [line for line in err.splitlines() if line.startswith("dasd filter: read")]
            outputs[workers, bool(verify)] = (parse_records(out), parse_records(rejects.read_bytes()),
                                              summary)
    for verify in (False, True):
        assert outputs["4", verify] == outputs["1", verify]
        kept = [r["id"] for r in outputs["1", verify][0]]
        assert kept == [r["id"] for r in records if r["id"].startswith(
            ("ok", "right") if verify else ("ok", "right", "wrong"))]
    assert "verified 20" in outputs["4", True][2][0] and "skipped 10" in outputs["4", True][2][0]
