"""`dasd sample` flags and record handling without a model (the fake OpenAI server)."""

from __future__ import annotations

from pathlib import Path

from helpers import parse_records, to_jsonl
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
    assert len({r["sampler"]["seed"] for r in records}) == 3
    assert all(r["extra"] == [1] and r["sampler"]["top_p"] == 0.9 for r in records)


# --------------------------------------------------------------------------- the library under the command


def test_planner_is_pure_and_counts_tokens_through_a_callable() -> None:
    from dasd_cli.core.sampling import Generation, Planner, build_record

    counted: list[str] = []

    def token_count(text: str) -> int:
        counted.append(text)
        return 10

    planner = Planner([0.6, 1.0], n=2, ratio=1.5, seed=3, token_count=token_count)
    record = {"id": "s", "prompt_id": "p", "prompt": "q", "response": "student answer", "das": {"score": 1}}
    jobs = planner.plan(record)
    assert jobs is not None and [j.request.key for j in jobs] == ["s@0.6#0", "s@0.6#1", "s@1#0", "s@1#1"]
    assert {j.request.max_tokens for j in jobs} == {15} and counted == ["student answer"]
    assert {j.prompt_id for j in jobs} == {"p"} and len({j.request.seed for j in jobs}) == 4
    generation = Generation(key=jobs[0].request.key, text="new", token_ids=[], logprobs=[-0.5],
                            offsets=[0], finish_reason="stop")
    built = build_record(jobs[0], generation, "teacher-model")
    assert built["response"] == "new" and built["sampler"]["model"] == "teacher-model"
    assert "das" not in built and built["id"] == "s@0.6#0"


def test_chunk_runner_writes_in_input_order_through_any_session() -> None:
    from dasd_cli.core.sampling import Generation, Planner
    from dasd_cli.core.tally import Tally
    from dasd_cli.pipeline.sampling import ChunkRunner

    class Reversed:
        """A backend that answers each chunk last request first."""

        model_name, chunk_requests = "fake", 3

        def generate(self, requests):
            for request in reversed(list(requests)):
                yield Generation(key=request.key, text=request.key, token_ids=[], logprobs=[-1.0],
                                 offsets=[0], finish_reason="stop")

    class Session:
        def __init__(self) -> None:
            self.tally, self.written = Tally("sample"), []

        def emit(self, record) -> None:
            self.written.append(record["id"])

    session = Session()
    session.tally.extra["tokens"] = 0
    runner = ChunkRunner(session, Reversed(), ordered=True)  # type: ignore[arg-type]
    planner = Planner([0.6], n=2)
    for i in range(4):
        runner.add(planner.plan({"id": f"q{i}", "prompt": "x"}) or [])
    runner.finish()
    assert session.written == [f"q{i}@0.6#{k}" for i in range(4) for k in range(2)]
    assert session.tally.extra["tokens"] == 8


# --------------------------------------------------------------------------- the record carries its messages

SYSTEM = "Answer like a pirate."


def sampled_with_system_prompt(cli, server, prompts: list[dict], *extra: str) -> list[dict]:
    code, out, err = cli(["sample", "--backend", "openai", "--base-url", server.url, "--compress", "none",
                          *extra, "-"], stdin=to_jsonl(prompts))
    assert code == 0, err
    return parse_records(out)


def test_records_carry_the_messages_the_backend_received(cli) -> None:
    from dasd_cli.core.chat import prompt_messages

    prompts = [{"id": "q", "prompt": "hi"},
               {"id": "m", "messages": [{"role": "system", "content": "Own system."},
                                        {"role": "user", "content": "yo"}]}]
    with FakeOpenAI() as server:
        records = sampled_with_system_prompt(cli, server, prompts, "--system-prompt", SYSTEM, "-n", "2")
        sent = {p["seed"]: p["messages"] for p in server.payloads}
    assert len(records) == 4
    for record in records:
        assert record["messages"] == sent[record["sampler"]["seed"]]
    q, m = records[0], records[2]
    assert q["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    assert q["prompt"] == q["messages"][-1]["content"]  # prompt and messages agree
    assert m["messages"][0] == {"role": "system", "content": "Own system."}  # a given system turn wins
    # later commands need no flag, and a flag never replaces the system turn the teacher saw
    assert prompt_messages(q) == prompt_messages(q, "Another prompt.") == q["messages"]


def test_continue_sends_and_carries_the_sampled_messages(cli) -> None:
    with FakeOpenAI() as server:
        first = sampled_with_system_prompt(cli, server, [{"id": "q", "prompt": "hi"}],
                                           "--system-prompt", SYSTEM, "--max-tokens", "40")
        student = [r | {"response": "One step. Two steps. Three steps. Four steps."} for r in first]
        server.payloads.clear()
        continued = sampled_with_system_prompt(cli, server, student, "--continue")
        sent = server.payloads[0]["messages"]
    assert continued[0]["messages"] == first[0]["messages"] == sent[:-1]
    assert sent[0] == {"role": "system", "content": SYSTEM} and sent[-1]["role"] == "assistant"
    assert continued[0]["prefix_chars"] > 0


# --------------------------------------------------------------------------- one writer per output


def test_concurrent_resume_runs_never_duplicate_ids(tmp_path: Path) -> None:
    """Four `dasd sample --resume -o out.jsonl` started at once (a double-started target, a
    retried job): one writes, the others refuse; every id is in the file once."""
    import subprocess

    from helpers import dasd_bin

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(to_jsonl([{"id": f"q{i}", "prompt": f"What is {i} + {i}?"} for i in range(12)]))
    out = tmp_path / "out.jsonl"
    expected = sorted(f"q{i}@0.6#0" for i in range(12))
    with FakeOpenAI(delay=0.2) as server:  # about 1.2 s of sampling per run: the runs overlap
        args = dasd_bin() + ["sample", "--backend", "openai", "--base-url", server.url, "--concurrency", "2",
                             "--resume", "-o", str(out), str(prompts)]
        runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
        results = [(run.wait(timeout=120), run.stderr.read().decode()) for run in runs]  # type: ignore[union-attr]
        for run in runs:
            run.stdout.close()  # type: ignore[union-attr]
            run.stderr.close()  # type: ignore[union-attr]
        ids = [r["id"] for r in parse_records(out.read_bytes())]
        assert len(ids) == len(set(ids)) and sorted(ids) == expected
        # a run that started after the writer finished finds every id there and exits 0
        refused = f"dasd sample: error: another dasd process is writing {out}; "
        assert all(code == 0 or (code == 1 and err.startswith(refused)) for code, err in results), results
        assert any(code == 0 for code, _ in results)
        assert sum(server.requests.values()) == 12  # the refused runs sampled nothing
        again = subprocess.run(args, capture_output=True, timeout=120)
        assert again.returncode == 0 and "resumed 12" in again.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "prompts.jsonl"]
