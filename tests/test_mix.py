"""dasd mix: dedupe, per-prompt selection, exact quotas, seeded order."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from dasd_cli.core.mix import Mixer, content_digest
from dasd_cli.errors import DasdError, RecordError


def rec(prompt: int, sample: int, *, domain: str = "math", score: int | None = None,
        p_teacher: float = 0.5, response: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"p{prompt}#{sample}", "prompt_id": f"p{prompt}", "domain": domain,
        "messages": [{"role": "user", "content": f"Question {prompt}?"}],
        "response": response if response is not None else f"Answer {prompt}.{sample}",
    }
    if score is not None:
        record["das"] = {"score": score, "p_teacher": p_teacher, "p_student": 0.3}
    return record


def run_mix(records: list[dict[str, Any]] | list[list[dict[str, Any]]], **kwargs: Any):
    """Feed one input (a list) or several (a list of lists); returns (kept, drops, quotas)."""
    inputs = records if records and isinstance(records[0], list) else [records]
    counts = kwargs.pop("counts", [None] * len(inputs))
    mixer = Mixer(inputs=[(f"in{i}", c) for i, c in enumerate(counts)], **kwargs)
    drops = []
    for source, stream in enumerate(inputs):
        for record in stream:
            drop = mixer.add(record, source)
            if drop is not None:
                drops.append(drop)
    kept, late, quotas = mixer.finish()
    return kept, drops + late, quotas


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


# --------------------------------------------------------------------------- DAS selection


def test_das_keeps_the_argmax_per_prompt() -> None:
    records = [rec(1, 0, score=3), rec(1, 1, score=7), rec(1, 2, score=5),
               rec(2, 0, score=0), rec(2, 1, score=2), rec(3, 0, score=4)]
    kept, drops, _ = run_mix(records, select="das", keep_order=True)
    assert ids(kept) == ["p1#1", "p2#1", "p3#0"]
    assert Counter(d.reason for d in drops) == {"not_selected": 3}


def test_das_ties_break_on_p_teacher_then_id() -> None:
    records = [rec(1, 2, score=5, p_teacher=0.6), rec(1, 0, score=5, p_teacher=0.9),
               rec(1, 1, score=5, p_teacher=0.9),  # same score and p_teacher as #0: id decides
               rec(2, 1, score=4, p_teacher=0.2), rec(2, 0, score=4, p_teacher=0.2)]
    kept, _, _ = run_mix(records, select="das", keep_order=True)
    assert sorted(ids(kept)) == ["p1#0", "p2#0"]
    # input order does not matter
    kept, _, _ = run_mix(list(reversed(records)), select="das", keep_order=True)
    assert sorted(ids(kept)) == ["p1#0", "p2#0"]


def test_das_per_prompt_k() -> None:
    records = [rec(1, i, score=s) for i, s in enumerate([1, 9, 4, 8, 2])]
    kept, _, _ = run_mix(records, select="das", per_prompt=2, keep_order=True)
    assert ids(kept) == ["p1#1", "p1#3"]


def test_das_without_das_object_is_a_record_error() -> None:
    mixer = Mixer(inputs=[("in", None)], select="das")
    with pytest.raises(RecordError) as info:
        mixer.add(rec(1, 0))
    assert info.value.reason == "missing_das" and "dasd score" in (info.value.hint or "")
    # the bad record left no trace: the same id is accepted once it is scored
    assert mixer.add(rec(1, 0, score=1)) is None


def test_random_selection_is_seeded_and_uniform() -> None:
    records = [rec(p, s) for p in range(200) for s in range(4)]
    first, _, _ = run_mix(records, select="random", seed=3)
    again, _, _ = run_mix(records, select="random", seed=3)
    other, _, _ = run_mix(records, select="random", seed=4)
    assert ids(first) == ids(again) and ids(first) != ids(other)
    assert sorted(r["prompt_id"] for r in first) == sorted(f"p{p}" for p in range(200))
    # every sample index gets picked about a quarter of the time
    picks = Counter(r["id"].split("#")[1] for r in first)
    assert all(20 <= picks[str(s)] <= 80 for s in range(4)), picks


# --------------------------------------------------------------------------- quotas


def test_file_counts_are_exact() -> None:
    mixed = [rec(p, 0, response=f"mixed {p}") for p in range(50)]
    offpolicy = [rec(p, 1, response=f"off {p}") for p in range(100, 300)]
    kept, drops, quotas = run_mix([mixed, offpolicy], counts=[17, 120], seed=1)
    assert len(kept) == 137
    assert sum(r["response"].startswith("mixed") for r in kept) == 17
    assert Counter(d.reason for d in drops) == {"over_quota": 50 - 17 + 200 - 120}
    assert [(q.target, q.available, q.kept, q.short) for q in quotas] == [(17, 50, 17, 0), (120, 200, 120, 0)]


def test_domain_quotas_are_exact_and_other_domains_dropped() -> None:
    records = ([rec(p, 0, domain="math") for p in range(40)]
               + [rec(p, 0, domain="code") for p in range(100, 130)]
               + [rec(p, 0, domain="science") for p in range(200, 205)])
    kept, drops, _ = run_mix(records, quotas={"math": 25, "code": 30}, seed=9)
    assert Counter(r["domain"] for r in kept) == {"math": 25, "code": 30}
    assert Counter(d.reason for d in drops) == {"over_quota": 15, "no_quota": 5}


def test_selection_then_quota_covers_prompts_first() -> None:
    # 10 prompts x 3 scored candidates, K=2, quota 12: all 10 best, then 2 second-best
    records = [rec(p, s, score=s) for p in range(10) for s in range(3)]
    kept, drops, _ = run_mix(records, select="das", per_prompt=2, quotas={"math": 12}, seed=5)
    assert len(kept) == 12
    assert len({r["prompt_id"] for r in kept}) == 10
    assert Counter(r["id"].split("#")[1] for r in kept) == {"2": 10, "1": 2}
    assert Counter(d.reason for d in drops) == {"not_selected": 10, "over_quota": 8}


def test_short_quota_is_an_error_saying_how_many_are_missing() -> None:
    records = [rec(p, 0) for p in range(30)]
    with pytest.raises(DasdError) as info:
        run_mix(records, quotas={"math": 40})
    assert "10 missing" in info.value.message and "--allow-short" in (info.value.hint or "")
    kept, _, quotas = run_mix(records, quotas={"math": 40, "code": 5}, allow_short=True)
    assert len(kept) == 30
    assert {q.name: q.short for q in quotas} == {"math": 10, "code": 5}


def test_empty_counted_input_is_short() -> None:
    with pytest.raises(DasdError, match="3 missing"):
        run_mix([[rec(1, 0)], []], counts=[1, 3])


# --------------------------------------------------------------------------- dedupe and order


def test_dedupe_by_id_and_by_normalized_content() -> None:
    a = rec(1, 0, response="The  answer\n is 4.")
    same_id = {**rec(2, 5), "id": "p1#0"}
    same_text = {**rec(1, 9, response=" The answer is\t4. "), "id": "other"}
    kept, drops, _ = run_mix([a, same_id, same_text, rec(3, 0)], keep_order=True)
    assert ids(kept) == ["p1#0", "p3#0"]
    assert Counter(d.reason for d in drops) == {"duplicate_id": 1, "duplicate_content": 1}
    assert content_digest(a) == content_digest(same_text) != content_digest(rec(3, 0))


def test_same_seed_same_output_and_keep_order() -> None:
    records = [rec(p, 0) for p in range(100)]
    first, _, _ = run_mix(records, seed=11)
    assert ids(first) == ids(run_mix(records, seed=11)[0])
    assert ids(first) != ids(run_mix(records, seed=12)[0])
    assert sorted(ids(first)) == sorted(ids(records)) and ids(first) != ids(records)
    assert ids(run_mix(records, keep_order=True)[0]) == ids(records)


# --------------------------------------------------------------------------- the command


def test_parse_input_reads_count_only_from_an_integer_suffix(tmp_path) -> None:
    from dasd_cli.pipeline.mixing import parse_input

    odd = tmp_path / "run:3"  # an existing file whose name ends like a count
    odd.write_text("")
    assert parse_input(str(odd)) == (str(odd), None)
    assert parse_input(f"{odd}:7") == (str(odd), 7)
    assert parse_input("data/a.jsonl.zst:7700") == ("data/a.jsonl.zst", 7700)
    assert parse_input("host:path.jsonl") == ("host:path.jsonl", None)
    assert parse_input("-") == ("-", None)
    assert parse_input("-:5") == ("-", 5)


def test_cli_blend_with_counts_dedupe_and_seed(cli, tmp_path) -> None:
    from helpers import parse_records, write_file

    mixed = write_file(tmp_path / "mixed:policy.jsonl", [rec(p, 0, response=f"m{p}") for p in range(30)])
    off = write_file(tmp_path / "off.jsonl.zst",
                     [rec(p, 1, response=f"o{p}") for p in range(100, 160)]
                     + [rec(100, 1, response="o100")]  # a duplicate id
                     + [{**rec(100, 7, response="o100"), "id": "new"}], "zstd")  # same content
    args = ["mix", f"{mixed}:12", f"{off}:40", "--seed", "5", "--compress", "none"]
    code, out, err = cli(args)
    assert code == 0, err
    records = parse_records(out)
    assert len(records) == 52
    assert sum(r["response"].startswith("m") for r in records) == 12
    assert "read 92, kept 52, dropped 40 (over_quota 38, duplicate_content 1, duplicate_id 1)" in err
    assert cli(args)[1] == out  # same seed, same bytes
    assert cli(args[:-4] + ["--seed", "6", "--compress", "none"])[1] != out


def test_cli_short_quota_and_missing_das(cli, tmp_path) -> None:
    from helpers import parse_records, to_jsonl

    data = to_jsonl([rec(p, 0) for p in range(5)])
    code, _out, err = cli(["mix", "--quota", "math=8", "-"], stdin=data)
    assert code == 1 and "quota math=8 cannot be met: only 5 records available, 3 missing" in err
    code, out, err = cli(["mix", "--quota", "math=8", "--allow-short", "--compress", "none", "-"], stdin=data)
    assert code == 0 and len(parse_records(out)) == 5 and "short 3" in err
    path = tmp_path / "unscored.jsonl"
    path.write_bytes(data)
    code, _out, err = cli(["mix", "--select", "das", str(path)])
    assert code == 1 and "no 'das' object" in err and f"({path}:1)" in err
    code, _out, err = cli(["mix", "--quota", "math", "-"], stdin=data)
    assert code == 2 and "DOMAIN=COUNT" in err
    code, _out, err = cli(["mix", "--quota", "math=2", f"{path}:3"])
    assert code == 2 and "every input has one" in err
