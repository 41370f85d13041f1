"""`dasd sample` flags and record handling without a model (the fake OpenAI server)."""

from __future__ import annotations

from pathlib import Path

from conftest import parse_records, to_jsonl
from fault_proxy import FakeOpenAI


def test_usage_errors(cli, tmp_path: Path) -> None:
    for args in (["--resume"], ["--resume", "-o", str(tmp_path / "o.jsonl.zst")], ["--top-p", "0"],
                 ["--temperature", "-1"], ["--continue", "--max-tokens-ratio", "1.5"],
                 ["--shard", "3/2"], ["--backend", "nope"], ["--endpoint", "grpc", "--backend", "openai",
                                                             "--base-url", "http://127.0.0.1:9/v1"]):
        code, out, err = cli(["sample", *args, "-"], stdin=b"")
        assert code == 2, (args, err)
        assert parse_records(out) == [] and "Traceback" not in err


def test_bad_records_shards_and_derived_ids(cli, tmp_path: Path) -> None:
    records = [{"id": "a", "prompt": "x"}, {"no": "prompt"}, {"prompt": "derived id"},
               {"id": "d", "messages": [{"role": "user", "content": "y"}]}]
    with FakeOpenAI() as server:
        base = ["sample", "--backend", "openai", "--base-url", server.url, "--compress", "none"]
        code, _out, err = cli([*base, "-"], stdin=to_jsonl(records))
        assert code == 1 and "record has neither 'messages' nor 'prompt' (<stdin>:2)" in err
        rejects = tmp_path / "rejects.jsonl"
        code, out, err = cli([*base, "--on-error", "skip", "--rejects", str(rejects), "-"], stdin=to_jsonl(records))
        assert code == 0, err
        ids = [r["id"] for r in parse_records(out)]
        assert ids[0] == "a@0.6#0" and ids[2] == "d@0.6#0" and ids[1].startswith("p-") and len(ids) == 3
        assert parse_records(rejects.read_bytes())[0]["rejected"]["reason"] == "missing_field"
        assert "read 4, wrote 3, dropped 0, skipped 1 (missing_field 1)" in err
        # the derived id is stable
        code, again, _err = cli([*base, "-"], stdin=to_jsonl(records[2:3]))
        assert parse_records(again)[0]["id"] == ids[1]
        # shards split the input by index and together cover it
        good = [r for r in records if r != {"no": "prompt"}]
        shards = []
        for k in range(2):
            code, out, err = cli([*base, "--shard", f"{k}/2", "-"], stdin=to_jsonl(good))
            assert code == 0, err
            shards.append([r["prompt_id"] for r in parse_records(out)])
        assert shards[0] == ["a", "d"] and len(shards[1]) == 1


def test_system_prompt_and_sample_fields(cli) -> None:
    with FakeOpenAI() as server:
        code, out, err = cli(["sample", "--backend", "openai", "--base-url", server.url, "--compress", "none",
                              "--system-prompt", "You are a helpful assistant.", "-n", "3", "--top-p", "0.9",
                              "--seed", "5", "-"], stdin=to_jsonl([{"id": "q", "prompt": "hi", "extra": [1]}]))
        assert code == 0, err
        assert all(p["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
                   for p in server.payloads)
    records = parse_records(out)
    assert [r["id"] for r in records] == ["q@0.6#0", "q@0.6#1", "q@0.6#2"]
    assert len({r["teacher"]["seed"] for r in records}) == 3
    assert all(r["extra"] == [1] and r["teacher"]["top_p"] == 0.9 for r in records)
