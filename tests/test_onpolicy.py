"""On-policy distillation data with the existing commands: the student samples, the
teacher scores (`dasd score --role teacher`), `dasd pack` carries both log-probs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helpers import char_model, make_tiny_model, parse_records, smollm2_tiny_model, to_jsonl, write_file

PROMPTS = [{"id": f"q{i}", "prompt": text} for i, text in
           enumerate(["what is 2+2?", "say hi", "name a color", "count to 3", "spell cat"])]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onpolicy-models")
    return {"student": char_model(root / "student", seed=0), "teacher": char_model(root / "teacher", seed=1)}


@pytest.fixture(scope="module")
def samples(models) -> list[dict]:
    from typer.testing import CliRunner

    from dasd_cli.cli import app

    result = CliRunner().invoke(app, ["sample", "--model", str(models["student"]), "-t", "1.0", "-n", "2",
                                      "--max-tokens", "24", "--dtype", "fp32", "--compress", "none", "-"],
                                input=to_jsonl(PROMPTS), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return parse_records(result.stdout_bytes)


def score(cli, tmp_path, records, teacher, *extra) -> tuple[int, list[dict], str, dict]:
    import orjson

    stats = tmp_path / "score-stats.json"
    code, out, err = cli(["score", "--role", "teacher", "--model", str(teacher), "--dtype", "fp32",
                          "--compress", "none", "--stats", str(stats), *extra, "-"], stdin=to_jsonl(records))
    return code, parse_records(out) if code == 0 else [], err, orjson.loads(stats.read_bytes()) if code == 0 else {}


def pack(cli, tmp_path, records, student, *extra) -> tuple[int, list[dict], str]:
    code, out, err = cli(["pack", "--tokenizer", str(student), "--cutoff-len", "256", "--compress", "none",
                          *extra, "-"], stdin=to_jsonl(records))
    return code, parse_records(out) if code == 0 else [], err


def test_samples_name_their_sampler(samples, models):
    from dasd_cli.core.chat import tokenizer_fingerprint
    from dasd_cli.model.load import load_tokenizer

    assert len(samples) == 10
    fingerprint = tokenizer_fingerprint(load_tokenizer(str(models["student"])))
    for record in samples:
        assert "teacher" not in record  # no field named teacher holds the student's numbers
        assert record["sampler"]["model"] == "student" and record["sampler"]["tokenizer"] == fingerprint
        assert record["sampler"]["temperature"] == 1.0


def test_student_as_its_own_teacher_gives_zero_advantages(cli, tmp_path, samples, models):
    """Sample and score with the same model, pack: every advantage is 0 (up to the float
    difference between sampling with a KV cache and one teacher-forced pass)."""
    code, scored, err, stats = score(cli, tmp_path, samples, models["student"])
    assert code == 0, err
    total = sum(len(r["sampler"]["logprobs"]) for r in samples)
    assert stats["teacher_tokens"] == total and stats["aligned"] == 10 and stats["misaligned"] == 0
    assert abs(stats["reverse_kl"]) < 1e-5
    for record in scored:
        block = record["teacher_scores"]
        assert block["model"] == "student" and block["aligned"] is True
        assert block["offsets"] == record["sampler"]["offsets"]
    code, packed, err = pack(cli, tmp_path, scored, models["student"])
    assert code == 0, err
    targets = 0
    for record in packed:
        for label, s, t in zip(record["labels"], record["sampler_logprobs"], record["teacher_logprobs"]):
            if label != -100:
                targets += 1
                assert s < 0 and abs(t - s) < 1e-5
            else:
                assert s == t == 0.0
    assert targets == total  # the sampled tokens exactly: no prompt, no end of turn


def test_a_teacher_scores_every_sampled_token_and_pack_lines_them_up(cli, tmp_path, samples, models):
    code, scored, err, stats = score(cli, tmp_path, samples, models["teacher"])
    assert code == 0, err
    kl, n = 0.0, 0
    for record in scored:
        s, t = record["sampler"]["logprobs"], record["teacher_scores"]["logprobs"]
        assert len(s) == len(t)
        kl += sum(a - b for a, b in zip(s, t))
        n += len(s)
    assert stats["reverse_kl"] == pytest.approx(kl / n, abs=1e-6) and stats["kl_tokens"] == n
    assert abs(stats["reverse_kl"]) > 1e-3  # two different random models
    assert f"teacher tokens {n}, aligned 10, misaligned 0" in err
    code, packed, err = pack(cli, tmp_path, scored, models["student"], "--no-pack")
    assert code == 0, err
    by_id = {r["id"]: r for r in scored}
    for record in packed:
        source = by_id[record["ids"][0]]
        kept = [i for i, label in enumerate(record["labels"]) if label != -100]
        assert [record["sampler_logprobs"][i] for i in kept] == pytest.approx(source["sampler"]["logprobs"], abs=1e-6)
        assert [record["teacher_logprobs"][i] for i in kept] == pytest.approx(
            source["teacher_scores"]["logprobs"], abs=1e-6)
        # each label is the token it stands on: the sampled response, re-tokenized
        from dasd_cli.model.load import load_tokenizer

        text = load_tokenizer(str(models["student"])).decode([record["input_ids"][i] for i in kept])
        assert text == source["response"]
    # scoring again reuses the stored scores: no teacher token is spent
    code, again, err, stats = score(cli, tmp_path, scored, models["teacher"])
    assert code == 0 and again == scored and stats["teacher_tokens"] == 0 and stats["aligned"] == 10


def test_misaligned_samples_are_dropped_and_counted_by_pack(cli, tmp_path, samples, models):
    code, scored, err, _ = score(cli, tmp_path, samples, models["teacher"])
    assert code == 0, err
    broken = [dict(r) for r in scored if len(r["sampler"]["offsets"]) > 2][:2]
    for record in broken:  # as if the sampler had written two tokens where the tokenizer sees one
        sampler = dict(record["sampler"])
        sampler["offsets"] = [sampler["offsets"][0]] + [o + 1 for o in sampler["offsets"][1:-1]] + [sampler["offsets"][-1]]
        record["sampler"] = sampler
    rest = [r for r in scored if r["id"] not in {b["id"] for b in broken}]
    rejects = tmp_path / "rejects.jsonl"
    code, packed, err = pack(cli, tmp_path, rest + broken, models["student"], "--rejects", str(rejects))
    assert code == 0, err
    assert "dropped 2 (tokens_misaligned 2)" in err
    assert sorted(i for r in packed for i in r["ids"]) == sorted(r["id"] for r in rest)
    assert {r["rejected"]["reason"] for r in parse_records(rejects.read_bytes())} == {"tokens_misaligned"}


def continuation(record: dict) -> dict:
    """``record`` as a mixed-policy continuation: its sampler wrote the response from its
    second token on (the first token's characters are the prefix)."""
    sampler = record["sampler"]
    cut = {key: sampler[key][1:] for key in ("logprobs", "offsets", "token_ids") if key in sampler}
    return {**record, "prefix_chars": sampler["offsets"][1], "sampler": {**sampler, **cut}}


def test_pack_refuses_a_continuation_as_an_on_policy_sample(cli, tmp_path, samples, models):
    """A mixed-policy continuation's sampler wrote only its tail: its log-probs do not cover
    the tokens the student would train on."""
    code, scored, err, _ = score(cli, tmp_path, samples[:3], models["teacher"])
    assert code == 0, err
    continued = continuation(scored[0])
    code, out, err = cli(["pack", "--tokenizer", str(models["student"]), "--on-error", "skip",
                          "--compress", "none", "-"], stdin=to_jsonl(scored[1:] + [continued]))
    assert code == 0 and "skipped 1 (has_prefix 1)" in err, err
    assert sorted(i for r in parse_records(out) for i in r["ids"]) == sorted(r["id"] for r in scored[1:])


def test_on_policy_and_sft_records_do_not_mix_in_one_pack(cli, tmp_path, samples, models):
    code, scored, err, _ = score(cli, tmp_path, samples[:2], models["teacher"])
    assert code == 0, err
    plain = {k: v for k, v in samples[2].items()}
    code, out, err = cli(["pack", "--tokenizer", str(models["student"]), "--on-error", "skip",
                          "--compress", "none", "-"], stdin=to_jsonl(scored + [plain]))
    assert code == 0 and "skipped 1 (mixed_objectives 1)" in err, err
    assert sorted(i for r in parse_records(out) for i in r["ids"]) == sorted(r["id"] for r in scored)


def test_a_teacher_with_another_tokenizer_is_refused(cli, tmp_path, samples):
    from transformers import AutoTokenizer

    other = make_tiny_model(tmp_path / "word-level")
    tokenizer = AutoTokenizer.from_pretrained(str(other))
    tokenizer.chat_template = "{% for m in messages %}t2 {{ m['content'] }} t3 {% endfor %}t4 "
    tokenizer.save_pretrained(str(other))
    code, _, err, _ = score(cli, tmp_path, samples[:1], other)
    assert code == 1 and "tokenizer_mismatch" not in err  # the message, not the code, on a stop
    assert "was sampled with tokenizer sha256:" in err and "the teacher's is sha256:" in err
    code, out, err = cli(["score", "--role", "teacher", "--model", str(other), "--dtype", "fp32", "--on-error",
                          "skip", "--compress", "none", "-"], stdin=to_jsonl(samples[:2]))
    assert code == 0 and "skipped 2 (tokenizer_mismatch 2)" in err and out == b""


def test_records_the_teacher_cannot_score_on_policy_are_errors(cli, tmp_path, samples, models):
    cold = [{**samples[0], "sampler": {**samples[0]["sampler"], "temperature": 0.6}}]
    code, _, err, _ = score(cli, tmp_path, cold, models["teacher"])
    assert code == 1 and "sampled at temperature 0.6" in err and "-t 1.0" in err
    code, _, err, _ = score(cli, tmp_path, [continuation(samples[1])], models["teacher"])
    assert code == 1 and "its sampler wrote only part of the response" in err, err
    code, _, err = cli(["score", "--role", "teacher", "--explain", "-"], stdin=to_jsonl(samples[:1]))
    assert code == 2 and "--role teacher writes teacher_scores" in err


def test_shards_score_the_same_records_as_one_run(cli, tmp_path, samples, models):
    """The multi-node path: `--shard K/N` on score splits the records; together the shards
    hold every record once, scored as one run scores it."""
    code, whole, err, _ = score(cli, tmp_path, samples, models["teacher"])
    assert code == 0, err
    parts = []
    for k in range(3):
        code, part, err, stats = score(cli, tmp_path, samples, models["teacher"], "--shard", f"{k}/3")
        assert code == 0, err
        parts += part
    assert sorted(parts, key=lambda r: r["id"]) == sorted(whole, key=lambda r: r["id"])


def test_reverse_kl_training_on_packed_student_samples_moves_toward_the_teacher(cli, tmp_path, samples, models):
    """End to end on the tiny pair: sample, score, pack, train with --objective reverse-kl;
    the trained student's log-probs of its samples move toward the teacher's."""
    code, scored, err, before = score(cli, tmp_path, samples, models["teacher"])
    assert code == 0, err
    code, packed, err = pack(cli, tmp_path, scored, models["student"])
    assert code == 0, err
    data = write_file(tmp_path / "packed.jsonl", packed)
    code, out, err = cli(["train", "--model", str(models["student"]), "--objective", "reverse-kl",
                          "--epochs", "8", "--global-batch-size", str(len(packed)), "--lr", "3e-3", "--min-lr", "3e-3",
                          "--warmup-ratio", "0", "--dtype", "fp32", "--compress", "none",
                          "--out", str(tmp_path / "trained"), str(data)])
    assert code == 0, err
    metrics = parse_records(out)  # every step sees every sample: later steps are off-policy
    assert metrics[0]["advantage"] == pytest.approx(-before["reverse_kl"], rel=1e-4, abs=1e-6)
    assert metrics[-1]["reverse_kl"] < metrics[0]["reverse_kl"]
    assert all(math.isfinite(m["loss"]) and 0 <= m["clip_fraction"] <= 1 for m in metrics)


@pytest.mark.slow
def test_sampled_token_ids_keep_every_non_canonical_sample(cli, tmp_path):
    """A random model over a BPE tokenizer with merges samples many token sequences that
    its tokenizer would split otherwise. Re-tokenizing such a response gives other tokens,
    so the teacher's scores cannot be laid over the sampled ones and pack drops it; with
    `dasd sample --token-ids` the teacher scores, and pack trains on, the sampled tokens."""
    model = smollm2_tiny_model(tmp_path / "model")
    runs = {}
    for name, extra in (("retokenized", []), ("token_ids", ["--token-ids"])):
        code, out, err = cli(["sample", "--model", str(model), "-t", "1.0", "-n", "3", "--max-tokens", "24",
                              "--dtype", "fp32", "--compress", "none", *extra, "-"], stdin=to_jsonl(PROMPTS))
        assert code == 0, err
        samples = parse_records(out)
        code, scored, err, stats = score(cli, tmp_path, samples, model)
        assert code == 0, err
        code, packed, err = pack(cli, tmp_path, scored, model, "--no-pack")
        assert code == 0, err
        runs[name] = (samples, stats, packed, err)
    (plain, plain_stats, plain_packed, plain_err), (ided, stats, packed, err) = runs["retokenized"], runs["token_ids"]
    assert [r["response"] for r in plain] == [r["response"] for r in ided]  # the same samples
    assert plain_stats["misaligned"] > 0 and f"tokens_misaligned {plain_stats['misaligned']}" in plain_err
    assert len(plain_packed) == len(plain) - plain_stats["misaligned"]
    assert stats["aligned"] == len(ided) == 15 and stats["misaligned"] == 0 and abs(stats["reverse_kl"]) < 1e-4
    by_id = {r["id"]: r for r in ided}
    assert len(packed) == 15 and "dropped 0" in err
    for record in packed:
        source = by_id[record["ids"][0]]["sampler"]
        kept = [i for i, label in enumerate(record["labels"]) if label != -100]
        assert [record["input_ids"][i] for i in kept] == source["token_ids"]  # the sampled tokens
        assert [record["sampler_logprobs"][i] for i in kept] == pytest.approx(source["logprobs"], abs=1e-6)


def _scored_records(tokenizer, n: int) -> list[dict]:
    """On-policy records as `dasd score --role teacher` writes them, without a model: every
    third one without its sampled ids (pack tokenizes its response again)."""
    import random

    from dasd_cli.core.chat import tokenize_with_offsets, tokenizer_fingerprint

    rng = random.Random(0)
    words = ["so", "the", "sum", "is", "12", "wait", "let", "me", "check", "then"]
    fingerprint = tokenizer_fingerprint(tokenizer)
    records = []
    for i in range(n):
        response = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        ids, offsets = tokenize_with_offsets(tokenizer, response)
        sampler = {"model": "student", "temperature": 1.0, "top_p": 1.0, "seed": 0, "logprobs_mode": "raw",
                   "tokenizer": fingerprint, "logprobs": [round(-rng.random(), 4) for _ in ids], "offsets": offsets}
        if i % 3:
            sampler["token_ids"] = ids
        records.append({"id": f"r{i}", "prompt_id": f"q{i}", "prompt": f"Question {i}?", "response": response,
                        "finish_reason": "stop", "sampler": sampler,
                        "teacher_scores": {"model": "teacher", "model_key": "k", "tokenizer": fingerprint,
                                           "logprobs": [round(-rng.random(), 4) for _ in ids],
                                           "offsets": offsets, "aligned": True}})
    return records


@pytest.mark.slow
def test_pack_in_worker_processes_carries_the_same_log_probs(tmp_path):
    """Three chunks of on-policy records: `pack --workers 2` tokenizes them in processes and
    writes what one process writes; each response token holds its sampler's and teacher's
    log-prob."""
    import orjson

    from helpers import run_dasd

    from dasd_cli.model.load import load_tokenizer

    records = _scored_records(load_tokenizer(None), 600)
    data = write_file(tmp_path / "scored.jsonl", records)
    outs = {}
    for workers in ("1", "2"):
        result = run_dasd(["pack", "--cutoff-len", "256", "--workers", workers, "--compress", "none", str(data)])
        assert result.returncode == 0, result.stderr.decode()
        assert b"read 600, packed 600" in result.stderr
        outs[workers] = result.stdout
    assert outs["1"] == outs["2"]
    by_id = {r["id"]: r for r in records}
    for packed in map(orjson.loads, outs["2"].splitlines()):
        starts = [i for i, p in enumerate(packed["position_ids"]) if p == 0] + [len(packed["input_ids"])]
        for sid, a, b in zip(packed["ids"], starts, starts[1:]):
            kept = [i for i in range(a, b) if packed["labels"][i] != -100]
            record = by_id[sid]
            assert [packed["sampler_logprobs"][i] for i in kept] == pytest.approx(record["sampler"]["logprobs"])
            assert [packed["teacher_logprobs"][i] for i in kept] == pytest.approx(
                record["teacher_scores"]["logprobs"])
