"""`dasd eval`: records out with an eval object, the table, --stats, --by, --compare, errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import parse_records, run_dasd, to_jsonl, write_file


def sample(prompt: str, i: int, said: str | None, *, answer: str = "4", domain: str = "math",
           model: str = "m1", finish: str = "stop", tokens: int | None = None,
           block: str = "sampler") -> dict[str, Any]:
    """Sample i of a prompt whose response states ``said`` (None: no answer at all).
    ``block`` "teacher": the sampler block under its name in files of earlier versions."""
    final = "I am not sure." if said is None else f"The answer is \\boxed{{{said}}}."
    record: dict[str, Any] = {
        "id": f"{prompt}@1.0#{i}", "prompt_id": prompt, "domain": domain,
        "messages": [{"role": "user", "content": f"Question {prompt}?"}],
        "response": f"<think>\nWorking on {prompt}.\n</think>\n\n{final}", "finish_reason": finish,
        "reference": {"answer": answer}, block: {"model": model}}
    if tokens is not None:
        record[block]["logprobs"] = [-0.5] * tokens
    return record


def choice(prompt: str, i: int, letter: str, *, reference: str = "B") -> dict[str, Any]:
    return {"id": f"{prompt}#{i}", "prompt_id": prompt, "domain": "science",
            "response": f"<think>\nhmm\n</think>\n\nAnswer: {letter}", "finish_reason": "stop",
            "reference": {"choice": reference}}


def run_set() -> list[dict[str, Any]]:
    """Two math prompts (4 samples each) and one science prompt, interleaved."""
    p1 = [sample("p1", 0, "4", tokens=10), sample("p1", 1, "4", tokens=20, block="teacher"),
          sample("p1", 2, "5", tokens=30, finish="length", block="teacher"), sample("p1", 3, "4", tokens=40)]
    p2 = [sample("p2", 0, "7", answer="3"), sample("p2", 1, None, answer="3"),
          sample("p2", 2, "3", answer="3"), sample("p2", 3, "7", answer="3")]
    s1 = [choice("s1", 0, "B"), choice("s1", 1, "C"), choice("s1", 2, "C"), choice("s1", 3, "B")]
    return [r for group in zip(p1, s1, p2) for r in group]


def stats_of(cli, tmp_path: Path, args: list[str], records: list[dict[str, Any]]) -> tuple[dict, str, list]:
    path = tmp_path / "stats.json"
    code, out, err = cli(["eval", "--stats", str(path), *args, "-"], stdin=to_jsonl(records))
    assert code == 0, err
    return orjson.loads(path.read_bytes()), err, parse_records(out)


def groups(stats: dict) -> dict[str, dict]:
    return {g["group"]: g for g in stats["evaluation"]["groups"]}


def test_records_come_out_in_order_with_an_eval_object(cli, tmp_path: Path) -> None:
    records = run_set() + [{"id": "free", "prompt_id": "f", "response": "Hello."}]
    stats, err, out = stats_of(cli, tmp_path, [], records)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    by_id = {r["id"]: r for r in out}
    assert by_id["p1@1.0#0"]["eval"] == {"correct": True, "reason": "correct", "answer": "4"}
    assert by_id["p1@1.0#2"]["eval"] == {"correct": False, "reason": "wrong_answer", "answer": "5"}
    assert by_id["p2@1.0#1"]["eval"] == {"correct": False, "reason": "no_answer", "answer": None}
    assert by_id["s1#1"]["eval"] == {"correct": False, "reason": "wrong_answer", "answer": "C"}
    assert "eval" not in by_id["free"]  # no reference: passed through, not counted
    assert by_id["p1@1.0#0"]["sampler"]["logprobs"] == [-0.5] * 10  # everything else carried
    assert by_id["p1@1.0#1"]["teacher"]["logprobs"] == [-0.5] * 20
    assert stats["verified"] == 12 and stats["unverified"] == 1
    assert stats["read"] == stats["kept"] == 13
    assert "dasd eval: read 13, kept 13, dropped 0, verified 12, unverified 1, accuracy 0.5" in err


def test_stats_hold_every_number(cli, tmp_path: Path) -> None:
    stats, _err, _out = stats_of(cli, tmp_path, [], run_set())
    g = groups(stats)
    math_row = g["math"]
    assert math_row["prompts"] == 2 and math_row["samples_per_prompt"] == {"min": 4, "max": 4}
    assert math_row["avg"] == pytest.approx((0.75 + 0.25) / 2)
    assert math_row["stderr"] == pytest.approx(0.25)  # stdev([0.75, 0.25]) / sqrt(2)
    # p1 3/4 right, p2 1/4: pass@2 = (1 + (1 - C(3,2)/C(4,2))) / 2
    assert math_row["pass_at"] == pytest.approx({"1": 0.5, "2": 0.75, "4": 1.0})
    # maj@2: p1 "4" x2 right, p2 "7" (no-answer abstains) wrong; maj@4: p1 right, p2 "7" x2 wrong
    assert math_row["maj_at"] == pytest.approx({"1": 0.5, "2": 0.5, "4": 0.5})
    assert math_row["truncation"] == pytest.approx(1 / 8)
    assert math_row["avg_ci95"] == pytest.approx([0.25, 0.75]) and math_row["truncation_ci95"] == pytest.approx([0, 0.25])
    assert math_row["mean_tokens"] == pytest.approx(25)  # only p1's samples carry logprobs
    science = g["science"]
    # B, C (tie at 2: mean of right and wrong) then C, B (tie again)
    assert science["maj_at"] == pytest.approx({"1": 1.0, "2": 0.5, "4": 0.5})
    assert science["stderr"] is None and science["mean_tokens"] is None
    overall = g["all"]
    assert overall["prompts"] == 3 and overall["avg"] == pytest.approx(0.5)
    assert stats["seed"] == 42 and stats["options"]["by"] == "domain"


def test_table_on_stderr_plain_and_markdown(cli, tmp_path: Path) -> None:
    _stats, err, _out = stats_of(cli, tmp_path, [], run_set())
    header = next(line for line in err.splitlines() if line.startswith("domain"))
    assert header.split() == ["domain", "prompts", "n", "avg@4", "±", "se", "95%", "CI", "pass@1", "pass@2",
                              "pass@4", "maj@2", "maj@4", "trunc", "%", "trunc", "95%", "CI", "tokens"]
    rows = {line.split()[0]: line.split() for line in err.splitlines()
            if line.split() and line.split()[0] in ("math", "science", "all")}
    # math: per-prompt accuracies 0.75 and 0.25, truncation 0/4 and 1/4: a bootstrap over
    # two prompts gives the extremes as its 2.5th and 97.5th percentiles
    assert rows["math"][1:] == ["2", "4", "50.0", "25.0", "[25.0,", "75.0]", "50.0", "75.0", "100.0", "50.0",
                                "50.0", "12.5", "[0.0,", "25.0]", "25"]
    assert rows["all"][1:4] == ["3", "4", "50.0"]
    assert err.rstrip().splitlines()[-1].startswith("dasd eval: read 12")  # the summary ends it
    report = tmp_path / "report.md"
    code, _out, err = cli(["eval", "--report", "md", "--report-file", str(report), "-"],
                          stdin=to_jsonl(run_set()))
    assert code == 0, err
    text = report.read_text()
    assert "| domain | prompts | n | avg@4 |" in text and "| math | 2 | 4 | 50.0 | 25.0 |" in text
    assert "avg@4" not in err  # the table went to the file
    code, _out, err = cli(["eval", "--report", "none", "-"], stdin=to_jsonl(run_set()))
    assert code == 0 and "avg@4" not in err
    code, _out, err = cli(["eval", "--quiet", "-"], stdin=to_jsonl(run_set()))
    assert code == 0 and err == ""
    uneven = run_set()[:-1]  # p2 keeps 3 samples: the header says avg@n, the row 3-4
    code, _out, err = cli(["eval", "-"], stdin=to_jsonl(uneven))
    assert code == 0 and "avg@n" in err
    assert next(line for line in err.splitlines() if line.startswith("all")).split()[2] == "3-4"
    code, _out, err = cli(["eval", "--report", "html", "-"], stdin=to_jsonl(run_set()))
    assert code == 2 and "Invalid value for '--report'" in err


def test_rich_table_for_a_terminal() -> None:
    from dasd_cli.core.evaluate import Evaluation
    from dasd_cli.report.evaluation import metric_rows, print_rich

    ev = Evaluation()
    for i, ok in enumerate((True, False)):
        ev.add("math", "p", ok, str(i))
    stream = io.StringIO()
    print_rich([("accuracy (%) by domain", *metric_rows(ev.summaries(), "domain"))], stream, width=200)
    text = stream.getvalue()
    assert "avg@2" in text and "pass@2" in text and "math" in text and "50.0" in text


def test_by_a_dotted_field(cli, tmp_path: Path) -> None:
    records = [sample("p", i, "4" if i < 3 else "1", model="big") for i in range(4)]
    # files of earlier versions name the sampler block "teacher": either name finds either
    records += [sample("p", i, "4" if i < 1 else "1", model="small", block="teacher") for i in range(4)]
    records += [{**sample("q", 0, "4"), "sampler": {}}]
    for by in ("sampler.model", "teacher.model"):
        stats, err, _out = stats_of(cli, tmp_path, ["--by", by], records)
        g = groups(stats)
        assert set(g) == {"big", "small", "(missing)", "all"}
        assert g["big"]["avg"] == pytest.approx(0.75) and g["small"]["avg"] == pytest.approx(0.25)
        assert g["all"]["prompts"] == 3  # one prompt per model counts as two
        assert any(line.startswith(by) for line in err.splitlines())
    code, _out, err = cli(["eval", "--by", "teacher..model", "-"], stdin=to_jsonl(records))
    assert code == 2 and "--by" in err


def test_compare_with_itself_raw_or_evaluated(cli, tmp_path: Path) -> None:
    raw = write_file(tmp_path / "raw.jsonl", run_set())
    evaluated = tmp_path / "evaluated.jsonl"
    code, _out, err = cli(["eval", "-o", str(evaluated), str(raw)])
    assert code == 0, err
    for other in (raw, evaluated):
        stats, err, _out = stats_of(cli, tmp_path, ["--compare", str(other)], run_set())
        rows = {row["group"]: row for row in stats["comparison"]["groups"]}
        assert rows["all"]["difference"] == 0.0 and rows["all"]["ci95"] == [0.0, 0.0]
        assert rows["all"]["prompts"] == 3 and rows["math"]["prompts"] == 2
        assert "avg difference" in err and "[+0.0, +0.0]" in err


def test_compare_a_shifted_run(cli, tmp_path: Path) -> None:
    """Every prompt 1 of 4 samples better than OTHER: the difference and its CI sit at +25."""
    here = [sample(f"p{p}", i, "4" if i < 2 else "9") for p in range(12) for i in range(4)]
    there = [sample(f"p{p}", i, "4" if i < 1 else "9") for p in range(12) for i in range(4)]
    other = write_file(tmp_path / "other.jsonl", there)
    stats, err, _out = stats_of(cli, tmp_path, ["--compare", str(other), "--seed", "5"], here)
    row = {r["group"]: r for r in stats["comparison"]["groups"]}["all"]
    assert row["difference"] == pytest.approx(0.25)
    assert row["ci95"] == pytest.approx([0.25, 0.25])
    assert row["avg"] == pytest.approx(0.5) and row["other_avg"] == pytest.approx(0.25)
    assert stats["comparison"]["resamples"] == 10000 and stats["seed"] == 5


def test_compare_mixed_gains_is_seeded(cli, tmp_path: Path) -> None:
    here = [sample(f"p{p}", i, "4" if (i + p) % 3 else "9") for p in range(20) for i in range(4)]
    there = [sample(f"p{p}", i, "4" if (i * p) % 2 else "9") for p in range(20) for i in range(4)]
    other = write_file(tmp_path / "other.jsonl", there)
    runs = [stats_of(cli, tmp_path, ["--compare", str(other), "--seed", str(s), "--resamples", "500"], here)[0]
            for s in (1, 1, 2)]
    cis = [{r["group"]: r for r in st["comparison"]["groups"]}["all"]["ci95"] for st in runs]
    assert cis[0] == cis[1] and cis[0] != cis[2]
    low, high = cis[0]
    difference = {r["group"]: r for r in runs[0]["comparison"]["groups"]}["all"]["difference"]
    assert low < difference < high


def test_compare_errors(cli, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_bytes(to_jsonl(run_set()[:2]) + b'{"prompt_id": "p1", "eval": {"correct": "yes"}}\n')
    code, _out, err = cli(["eval", "--compare", str(other), "-"], stdin=to_jsonl(run_set()))
    assert code == 1 and f"({other}:3)" in err and "'eval' must be an object" in err
    unrelated = write_file(tmp_path / "unrelated.jsonl", [sample("zzz", 0, "4")])
    code, _out, err = cli(["eval", "--compare", str(unrelated), "-"], stdin=to_jsonl(run_set()))
    assert code == 2 and "no prompt in common" in err
    code, out, err = cli(["eval", "--compare", str(tmp_path / "nowhere.jsonl"), "-"], stdin=to_jsonl(run_set()))
    assert code == 2 and "no such file" in err and parse_records(out) == []


def test_bad_records_name_file_and_line_or_are_skipped(cli, tmp_path: Path) -> None:
    good = run_set()[:3]
    no_prompt = {k: v for k, v in sample("p9", 0, "4").items() if k != "prompt_id"}
    bad_reference = {**sample("p9", 1, "4"), "reference": {"solution": 4}}
    no_response = {k: v for k, v in sample("p9", 2, "4").items() if k != "response"}
    for bad, reason in ((no_prompt, "missing_field"), (bad_reference, "bad_reference"),
                        (no_response, "missing_field")):
        path = write_file(tmp_path / "in.jsonl", [*good[:2], bad, good[2]])
        code, out, err = cli(["eval", str(path)])
        assert code == 1, err
        assert f"({path}:3)" in err and "Traceback" not in err
        rejects = tmp_path / "rejects.jsonl"
        code, out, err = cli(["eval", "--on-error", "skip", "--rejects", str(rejects), str(path)])
        assert code == 0, err
        assert [r["id"] for r in parse_records(out)] == [r["id"] for r in good]
        assert f"skipped 1 ({reason} 1)" in err and "verified 3" in err
        assert [r["rejected"]["reason"] for r in parse_records(rejects.read_bytes())] == [reason]


def test_workers_give_the_same_output(cli, tmp_path: Path) -> None:
    one = stats_of(cli, tmp_path, [], run_set())
    two = stats_of(cli, tmp_path, ["--workers", "3"], run_set())
    assert one[2] == two[2]
    assert one[0]["evaluation"] == two[0]["evaluation"]


def test_code_samples_are_tested_and_have_no_majority(tmp_path: Path) -> None:
    tests = "assert add(2, 3) == 5\n"
    bodies = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"]
    records = [{"id": f"c#{i}", "prompt_id": "c", "domain": "code", "finish_reason": "stop",
                "response": f"<think>\nx\n</think>\n\n```python\n{body}```\n", "reference": {"tests": tests}}
               for i, body in enumerate(bodies)]
    proc = run_dasd(["eval", "--compress", "none", "--stats", str(tmp_path / "s.json"), "-"],
                    stdin=to_jsonl(records))
    assert proc.returncode == 0, proc.stderr.decode()
    out = parse_records(proc.stdout)
    assert [r["eval"]["correct"] for r in out] == [True, False]
    assert out[1]["eval"]["reason"] == "tests_failed" and out[0]["eval"]["answer"] is None
    code = groups(orjson.loads((tmp_path / "s.json").read_bytes()))["code"]
    assert code["avg"] == 0.5 and code["maj_at"] is None and code["pass_at"] == {"1": 0.5, "2": 1.0}


def test_thread_map_keeps_order_and_bounds_the_work_in_flight() -> None:
    import threading
    import time

    from dasd_cli.workers import ordered_thread_map

    started: list[int] = []
    lock = threading.Lock()

    def items():
        for i in range(40):
            with lock:
                started.append(i)
            yield i

    seen = []

    def slow(i: int) -> int:
        time.sleep(0.001 * ((i * 7) % 5))  # later items often finish first
        return i * i

    for i, result in ordered_thread_map(slow, items(), workers=4, window=6):
        seen.append((i, result))
        assert len(started) <= i + 1 + 6  # never more than the window read ahead
    assert seen == [(i, i * i) for i in range(40)]
    main = threading.main_thread()
    assert [t for _, t in ordered_thread_map(lambda _: threading.current_thread(), [1, 2], workers=1)] == [main, main]
