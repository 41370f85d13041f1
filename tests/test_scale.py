"""The data plane at scale: on-disk stores, and mix / pack / train giving the same results
as the in-memory algorithms they replace; the token store; two torchrun "nodes"."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import numpy as np
import orjson
import pytest

from helpers import (free_port, make_samples, make_tiny_model, packed_records, parse_records, run_dasd, to_jsonl,
                     write_file)
from dasd_cli.core.mix import Mixer
from dasd_cli.store import RecordSpill, TokenStore, TokenStoreWriter

# --------------------------------------------------------------------------- stores


def test_token_store_rows_are_plain_npy_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.integers(-100, 50_000, size=n).astype(np.int32) for n in (5, 0, 17, 1)]
    writer = TokenStoreWriter(tmp_path / "s", columns=("a", "b"), per_row=("extra",))
    for k, row in enumerate(rows):
        assert writer.append({"a": row, "b": row * 2}, extra=k * 10) == k
    with pytest.raises(ValueError, match="column b"):
        writer.append({"a": rows[0], "b": rows[2]}, extra=0)
    writer.close({"note": "x"})
    with TokenStore(tmp_path / "s") as store:
        assert len(store) == 4 and store.meta["tokens"] == 23 and store.meta["note"] == "x"
        assert store.lengths().tolist() == [5, 0, 17, 1]
        assert store.per_row["extra"].tolist() == [0, 10, 20, 30]
        for k, row in enumerate(rows):
            got = store.row(k, "b")
            assert got.tolist() == (row * 2).tolist() and got.flags.writeable
    # any numpy program can open the columns, memory-mapped
    mapped = np.load(tmp_path / "s" / "a.npy", mmap_mode="r")
    assert mapped.dtype == np.int32 and mapped.tolist() == np.concatenate(rows).tolist()
    assert np.load(tmp_path / "s" / "offsets.npy").tolist() == [0, 5, 5, 22, 23]


def test_record_spill_round_trip():
    payloads = [orjson.dumps({"id": i, "text": "x" * (i * 997)}) for i in range(50)]
    with RecordSpill() as spill:
        handles = [spill.put(p) for p in payloads]
        assert spill.bytes_in == sum(map(len, payloads)) > spill.bytes_on_disk
        for k in (49, 0, 17, 17, 3):
            assert spill.get(handles[k]) == payloads[k]


# --------------------------------------------------------------------------- mix


def scored(n_prompts: int, per_prompt: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for p in range(n_prompts):
        for k in range(per_prompt):
            records.append({"id": f"p{p}#{k}", "prompt_id": f"p{p}",
                            "domain": rng.choice(["math", "code", "science"]),
                            "messages": [{"role": "user", "content": f"question {p}"}],
                            "response": f"answer {k} " + "w " * rng.randint(1, 300),
                            "sampler": {"logprobs": [rng.random() for _ in range(20)]},
                            "das": {"score": rng.randint(0, 3), "p_teacher": rng.random()}})
    records.append(dict(records[3]))  # a duplicate id
    return records


def in_memory_mix(records: list[dict], **kwargs) -> tuple[list[dict], list[tuple[str, str]]]:
    mixer = Mixer(inputs=[("-", None)], **kwargs)
    drops = []
    for record in records:
        drop = mixer.add(record)
        if drop is not None:
            drops.append((drop.record["id"], drop.reason))
    kept, left_out, _ = mixer.finish()
    return kept, drops + [(d.record["id"], d.reason) for d in left_out]


@pytest.mark.parametrize("flags,kwargs", [
    ([], {}),
    (["--select", "das", "--per-prompt", "2"], {"select": "das", "per_prompt": 2}),
    (["--select", "random", "--quota", "math=9", "--quota", "code=7"],
     {"select": "random", "quotas": {"math": 9, "code": 7}}),
    (["--quota", "science=5", "--keep-order"], {"quotas": {"science": 5}, "keep_order": True}),
])
def test_mix_through_the_spill_equals_the_in_memory_mixer(tmp_path, flags, kwargs):
    records = scored(30, 4)
    data = write_file(tmp_path / "in.jsonl.zst", records, "zstd")
    rejects = tmp_path / "rejects.jsonl"
    result = run_dasd(["mix", "--seed", "5", "--compress", "none", "--rejects", str(rejects),
                       *flags, str(data)])
    assert result.returncode == 0, result.stderr.decode()
    kept, drops = in_memory_mix(records, seed=5, **kwargs)
    assert result.stdout == to_jsonl(kept)  # byte for byte
    got_drops = [(r["id"], r["rejected"]["reason"]) for r in parse_records(rejects.read_bytes())]
    assert got_drops == drops
    assert all("sampler" in r for r in parse_records(rejects.read_bytes()))  # whole records


# --------------------------------------------------------------------------- pack


def responses(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ["so", "the", "sum", "is", "12", "wait", "let", "me", "check", "x^2", "then"]
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"}],
             "response": "<think>\n" + " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
             + "\n</think>\n\nThe answer is 12."} for i in range(n)]


@pytest.mark.slow
def test_pack_in_worker_processes_equals_one_process_and_the_reference(tmp_path):
    from dasd_cli.model.load import load_tokenizer
    from dasd_cli.core.chat import encode_example, tokenizer_fingerprint
    from dasd_cli.core.pack import packed_record, plan_sequences

    smollm2_tokenizer = load_tokenizer(None)

    records = responses(700)  # three chunks of 256: the worker pool runs
    data = write_file(tmp_path / "in.jsonl", records)
    outs = {}
    for workers in ("1", "2"):
        stats = tmp_path / f"stats{workers}.json"
        result = run_dasd(["pack", "--cutoff-len", "300", "--workers", workers, "--compress", "none",
                           "--stats", str(stats), str(data)])
        assert result.returncode == 0, result.stderr.decode()
        outs[workers] = result.stdout
        assert orjson.loads(stats.read_bytes())["tokens_per_s"] > 0
    assert outs["1"] == outs["2"]
    # the reference: one record at a time, packed in memory
    encoded = [encode_example(smollm2_tokenizer, r["messages"], r["response"]) for r in records]
    members, _ = plan_sequences(np.array([len(e) for e in encoded]), 300)
    fingerprint = tokenizer_fingerprint(smollm2_tokenizer)
    want = [packed_record([np.array(encoded[i].input_ids) for i in m],
                          [encoded[i].prompt_len for i in m], [f"r{i}" for i in m], fingerprint)
            for m in members]
    assert outs["2"] == b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in want)


@pytest.mark.slow
def test_pack_workers_report_a_bad_line_by_file_and_line(tmp_path):
    lines = to_jsonl(responses(600)).splitlines(keepends=True)
    lines[400] = b'{"id": "broken", "messages": [\n'
    lines[500] = orjson.dumps({"id": "no-response", "prompt": "hi"}) + b"\n"
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(lines))
    result = run_dasd(["pack", "--workers", "2", "--compress", "none", str(data)])
    assert result.returncode == 1 and f"({data}:401)" in result.stderr.decode()
    rejects = tmp_path / "rejects.jsonl"
    result = run_dasd(["pack", "--workers", "2", "--on-error", "skip", "--rejects", str(rejects),
                       "--compress", "none", str(data)])
    assert result.returncode == 0, result.stderr.decode()
    assert b"read 600, packed 598" in result.stderr
    assert b"skipped 2 (malformed_json 1, missing_field 1)" in result.stderr
    assert len(parse_records(rejects.read_bytes())) == 2
    ids = [i for p in parse_records(result.stdout) for i in p["ids"]]
    assert sorted(ids) == sorted(f"r{i}" for i in range(600) if i not in (400, 500))


# --------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _train_args(model, out, store) -> list[str]:
    return ["train", "--model", str(model), "--out", str(out), "--epochs", "2",
            "--global-batch-size", "2", "--dtype", "fp32", "--compress", "none",
            "--token-store", str(store)]


def test_train_converts_once_and_reuses_the_token_store(tmp_path, tiny):
    records = packed_records(make_samples(9, seed=4), 2)
    data = write_file(tmp_path / "packed.jsonl.zst", records, "zstd")
    store = tmp_path / "tokens"
    first = run_dasd(_train_args(tiny, tmp_path / "a", store) + [str(data)])
    assert first.returncode == 0, first.stderr.decode()
    assert b"token store reused" not in first.stderr
    (folder,) = [p for p in store.iterdir() if p.is_dir() and p.name != "by-stat"]
    assert [m.read_text().strip() for m in (store / "by-stat").iterdir()] == [folder.name]
    assert (folder / "meta.json").is_file() and not list(store.glob(".*tmp"))
    # a second run (and a copy of the same bytes) opens the store instead of parsing
    copy = tmp_path / "copy.jsonl.zst"
    copy.write_bytes(data.read_bytes())
    second = run_dasd(_train_args(tiny, tmp_path / "b", store) + [str(copy)])
    assert second.returncode == 0, second.stderr.decode()
    assert b"read 5, trained on 5" in second.stderr and b"token store reused" in second.stderr
    assert [p for p in store.iterdir() if p.is_dir() and p.name != "by-stat"] == [folder]
    assert len(list((store / "by-stat").iterdir())) == 2  # the copy is another file, same key
    # stdin goes through a temporary store, removed afterwards
    piped = run_dasd(_train_args(tiny, tmp_path / "c", tmp_path / "unused"), stdin=data.read_bytes())
    assert piped.returncode == 0, piped.stderr.decode()
    assert not (tmp_path / "unused").exists()
    losses = [[m["loss"] for m in parse_records(r.stdout)] for r in (first, second, piped)]
    assert losses[0] == losses[1] == losses[2] and len(losses[0]) == 6
    # changed bytes: a new conversion
    write_file(data, records[:4], "zstd")
    third = run_dasd(_train_args(tiny, tmp_path / "d", store) + [str(data)])
    assert third.returncode == 0 and b"token store reused" not in third.stderr
    assert len([p for p in store.iterdir() if p.is_dir() and p.name != "by-stat"]) == 2


def test_train_refuses_data_packed_for_another_tokenizer(tmp_path, tiny):
    records = packed_records(make_samples(4), 2)
    for r in records:
        r["tokenizer"] = "sha256:0123456789abcdef"
    data = write_file(tmp_path / "packed.jsonl", records)
    result = run_dasd(_train_args(tiny, tmp_path / "o", tmp_path / "tokens") + [str(data)])
    err = result.stderr.decode()
    assert result.returncode == 1 and "packed with another tokenizer (sha256:0123456789abcdef)" in err
    assert "--tokenizer" in err and not (tmp_path / "o" / "model.safetensors").exists()
    # the same data stamped with the model's own fingerprint trains
    from transformers import AutoTokenizer

    from dasd_cli.core.chat import tokenizer_fingerprint

    own = tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny)))
    for r in records:
        r["tokenizer"] = own
    write_file(data, records)
    result = run_dasd(_train_args(tiny, tmp_path / "o", tmp_path / "tokens") + [str(data)])
    assert result.returncode == 0, result.stderr.decode()
    assert b"no tokenizer fingerprint" not in result.stderr


def test_train_vocabulary_check_names_the_record(tmp_path, tiny):
    records = packed_records(make_samples(4), 1)
    records[2]["input_ids"][0] = 500  # the tiny model has 97 tokens
    data = write_file(tmp_path / "packed.jsonl", records)
    result = run_dasd(_train_args(tiny, tmp_path / "o", tmp_path / "tokens") + [str(data)])
    err = result.stderr.decode()
    assert result.returncode == 1 and "token id 500 outside the model's vocabulary" in err
    assert f"{data}:3" in err


@pytest.mark.slow
def test_torchrun_two_nodes_match_one_process(tmp_path, tiny):
    """Two torchrun "nodes" of one CPU rank each, on loopback over gloo, share one token
    store and produce the single process's losses and weights."""
    import torch
    from safetensors.torch import load_file

    data = write_file(tmp_path / "packed.jsonl", packed_records(make_samples(16, seed=9), 2))
    store = tmp_path / "shared-tokens"
    args = _train_args(tiny, tmp_path / "single", store)
    single = run_dasd(args + [str(data)])
    assert single.returncode == 0, single.stderr.decode()
    shutil.rmtree(store)  # the nodes convert afresh
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "dasd_cli.cli", *_train_args(tiny, tmp_path / "multi", store), str(data)]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    outs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, err.decode()[-3000:]
    want, got = parse_records(single.stdout), parse_records(outs[0][0])
    assert parse_records(outs[1][0]) == []  # only global rank 0 writes metrics
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["target_tokens"] == a["target_tokens"]
    assert len([p for p in store.iterdir() if p.is_dir() and p.name != "by-stat"]) == 1  # one conversion
    a, b = load_file(str(tmp_path / "single" / "model.safetensors")), \
        load_file(str(tmp_path / "multi" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
