"""`dasd import`: the released Superior-Reasoning data (rows and Logprob file) as records.

The slice (tests/released_slice.py) is written in the released schema: data rows {uuid, input, output,
domain, meta} and Logprob rows {sample_uuid, token_ids, logprobs}, whose tokens spell the
harmony response (analysis text first, then the final channel). gpt-oss's tokenizer is
not installed here, so the token ids are the embedded default model's, and the
alignment code path (decode, harmony normalization, remap) is the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import dasd_bin, parse_records, to_jsonl
from released_slice import (MISMATCH, MISSING, check_slice, data_rows, logprob_rows, token_parts,
                            write_jsonl)


@pytest.fixture(scope="module")
def tokenizer():
    from dasd_cli.model.load import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(str(folder))
    return folder


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 2) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return path


def test_jsonl_slice_joins_logprobs(tmp_path: Path, tokenizer, tokenizer_folder: Path, cli) -> None:
    data = write_jsonl(tmp_path / "stage1.jsonl", data_rows())
    lp = write_jsonl(tmp_path / "logprob.jsonl", logprob_rows(tokenizer))
    rejects = tmp_path / "rejects.jsonl"
    code, out, err = cli(["import", "--compress", "none", "--logprobs", str(lp), "--tokenizer",
                          str(tokenizer_folder), "--rejects", str(rejects), str(data)])
    assert code == 0, err
    records = parse_records(out)
    check_slice(tokenizer, records, err)
    assert records[0]["domain"] == "math" and records[1]["domain"] == "instruction"
    assert records[1]["source_domain"] == "instruction_following"
    assert records[0]["meta"] == {"source": "slice", "n": 0}
    rejected = {r["id"]: r["rejected"] for r in parse_records(rejects.read_bytes())}
    assert rejected[MISSING]["reason"] == "missing_logprobs"
    assert MISSING in rejected[MISSING]["detail"]
    assert rejected[MISMATCH]["reason"] == "tokens_mismatch"
    assert "nitrogen" in rejected[MISMATCH]["detail"] and "oxygen" in rejected[MISMATCH]["detail"]


def test_parquet_slice_joins_logprobs(tmp_path: Path, tokenizer, tokenizer_folder: Path, cli) -> None:
    data = write_parquet(tmp_path / "stage1.parquet", data_rows())
    lp = write_parquet(tmp_path / "logprob.parquet", logprob_rows(tokenizer))
    code, out, err = cli(["import", "--compress", "none", "--logprobs", str(lp), "--tokenizer",
                          str(tokenizer_folder), str(data)])
    assert code == 0, err
    check_slice(tokenizer, parse_records(out), err)
    # Parquet data with a JSONL Logprob file, and the other way round, agree
    code, mixed, err = cli(["import", "--compress", "none", "--logprobs",
                            str(write_jsonl(tmp_path / "lp.jsonl", logprob_rows(tokenizer))),
                            "--tokenizer", str(tokenizer_folder), str(data)])
    assert code == 0, err
    assert mixed == out


def test_without_logprobs_every_row_is_a_record(cli, tmp_path: Path) -> None:
    code, out, err = cli(["import", "--compress", "none", str(write_jsonl(tmp_path / "d.jsonl", data_rows()))])
    assert code == 0, err
    records = parse_records(out)
    assert [r["domain"] for r in records] == ["math", "instruction", "code", "science"]
    assert all("logprobs" not in r["sampler"] for r in records)
    assert len({r["prompt_id"] for r in records}) == 4


def test_harmony_output_becomes_think_form(cli) -> None:
    row = {"uuid": "h1", "input": "Q?", "domain": "math", "meta": "",
           "output": "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>A.<|return|>"}
    code, out, err = cli(["import", "--compress", "none", "-"], stdin=to_jsonl([row]))
    assert code == 0, err
    assert parse_records(out)[0]["response"] == "<think>\nThink.\n</think>\n\nA."


def test_messages_input_and_unknown_domain(cli) -> None:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    row = {"uuid": "m1", "input": orjson.dumps(turns).decode(), "output": "Hello.", "domain": "chat", "meta": ""}
    code, out, err = cli(["import", "--compress", "none", "-"], stdin=to_jsonl([row]))
    assert code == 0, err
    record = parse_records(out)[0]
    assert record["messages"] == turns and record["domain"] == "other" and record["response"] == "Hello."


def test_a_row_without_output_names_file_and_line(cli, tmp_path: Path) -> None:
    rows = data_rows()
    del rows[1]["output"]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, _out, err = cli(["import", str(path)])
    assert code == 1
    assert f"({path}:2)" in err and "'output'" in err
    code, out, err = cli(["import", "--compress", "none", "--on-error", "skip", str(path)])
    assert code == 0 and len(parse_records(out)) == 3 and "skipped 1 (missing_field 1)" in err


def test_logprobs_need_the_gpt_oss_tokenizer(cli, tmp_path: Path) -> None:
    lp = write_jsonl(tmp_path / "lp.jsonl", [])
    code, _out, err = cli(["import", "--logprobs", str(lp), "-"], stdin=b"")
    assert code == 2 and "--tokenizer" in err and "o200k_harmony" in err


def test_compressed_logprob_file_is_refused(cli, tmp_path: Path, tokenizer_folder: Path) -> None:
    from helpers import zstd_bytes

    lp = tmp_path / "lp.jsonl.zst"
    lp.write_bytes(zstd_bytes(b'{"sample_uuid": "a", "token_ids": [], "logprobs": []}\n'))
    code, _out, err = cli(["import", "--logprobs", str(lp), "--tokenizer", str(tokenizer_folder), "-"],
                         stdin=b"")
    assert code == 2 and "compressed" in err


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    from dasd_cli.errors import UsageError
    from dasd_cli.io.released import iter_parquet

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1....PAR1")
    with pytest.raises(UsageError) as err:
        next(iter_parquet(str(path)))
    assert "dasd[parquet]" in (err.value.hint or "")


def peak_rss_kib(args: list[str]) -> int:
    """Peak RSS of one dasd run, in KiB (a fresh parent, so only this child counts)."""
    probe = ("import resource, subprocess, sys; "
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
             "assert p.returncode == 0, p.stderr.decode(); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", probe, *dasd_bin(), *args], check=True,
                              capture_output=True).stdout)


def big_slice(tmp_path: Path, tokenizer, n: int, tokens: int) -> tuple[Path, Path]:
    reasoning = " ".join(f"step{k % 97}" for k in range(tokens))
    ids, _, _ = token_parts(tokenizer, reasoning, "Done.")
    rows = ({"uuid": f"u{i}", "input": f"Q{i}", "output": f"<think>\n{reasoning}\n</think>\n\nDone.",
             "domain": "math", "meta": ""} for i in range(n))
    data = tmp_path / f"data{n}.jsonl"
    with open(data, "wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    lp = tmp_path / f"lp{n}.jsonl"
    logprobs = [-0.5] * len(ids)
    with open(lp, "wb") as handle:
        for i in reversed(range(n)):
            handle.write(orjson.dumps({"sample_uuid": f"u{i}", "token_ids": ids, "logprobs": logprobs}) + b"\n")
    return data, lp


@pytest.mark.slow
def test_memory_does_not_grow_with_the_file(tmp_path: Path, tokenizer, tokenizer_folder: Path) -> None:
    """Four times the rows: peak RSS grows by far less than the log-prob lists would take."""
    small, large = 500, 2000
    rss = {}
    for n in (small, large):
        data, lp = big_slice(tmp_path, tokenizer, n, 400)
        rss[n] = peak_rss_kib(["import", "--logprobs", str(lp), "--tokenizer", str(tokenizer_folder),
                               "-o", str(tmp_path / f"out{n}.jsonl.zst"), str(data)])
    # holding the extra 1500 rows' lists would cost > 1500 * 400 * 2 Python objects (~30 MB)
    assert rss[large] - rss[small] < 15 * 1024, rss
