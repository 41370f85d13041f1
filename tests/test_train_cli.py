"""`dasd train` through the CLI: flags, errors, outputs, and stage chaining on SmolLM2."""

from __future__ import annotations

import orjson
import pytest

from helpers import make_samples, make_tiny_model, pack, packed_records, parse_records, run_dasd, to_jsonl, write_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_requires_out(cli, tmp_path, tiny):
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(2), 1))
    code, out, err = cli(["train", "--model", str(tiny), str(data)])
    assert code == 2 and "--out DIR is required" in err and parse_records(out) == []


def test_liger_fails_clearly_without_a_gpu(cli, tmp_path, tiny):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(2), 1))
    code, _, err = cli(["train", "--model", str(tiny), "--out", str(tmp_path / "o"), "--liger", str(data)])
    assert code == 2 and "--liger needs a CUDA GPU" in err and "hint:" in err


def test_bad_record_names_file_and_line_or_is_skipped(cli, tmp_path, tiny):
    good = packed_records(make_samples(4), 1)
    bad = dict(good[1])
    del bad["labels"]
    data = write_file(tmp_path / "p.jsonl", [good[0], bad, good[2], good[3]])
    args = ["train", "--model", str(tiny), "--out", str(tmp_path / "o"), "--epochs", "1",
            "--global-batch-size", "1", "--dtype", "fp32", "--compress", "none"]
    code, out, err = cli(args + [str(data)])
    assert code == 1 and f"({data}:2)" in err and "'labels'" in err
    code, out, err = cli(args + ["--on-error", "skip", "--rejects", str(tmp_path / "rej.jsonl"), str(data)])
    assert code == 0, err
    assert len(parse_records(out)) == 3
    assert "read 4, trained on 3" in err and "skipped 1 (missing_field 1)" in err
    rejected = parse_records((tmp_path / "rej.jsonl").read_bytes())
    assert rejected[0]["rejected"]["reason"] == "missing_field"
    # again, on the token store the first run converted: the same counts and rejects
    code, out, err = cli(args + ["--on-error", "skip", "--rejects", str(tmp_path / "rej2.jsonl"), str(data)])
    assert code == 0 and "token store reused" in err
    assert "read 4, trained on 3" in err and "skipped 1 (missing_field 1)" in err
    assert parse_records((tmp_path / "rej2.jsonl").read_bytes()) == rejected
    code, out, err = cli(args + ["--on-error", "skip", str(data)])  # no rejects file: counts replayed
    assert code == 0 and "read 4, trained on 3" in err and "skipped 1 (missing_field 1)" in err


def test_stdin_zstd_metrics_plot_and_final_model(tmp_path, tiny):
    import zstandard

    data = zstandard.ZstdCompressor().compress(to_jsonl(packed_records(make_samples(6), 2)))
    result = run_dasd(["train", "--model", str(tiny), "--out", str(tmp_path / "o"), "--epochs", "2",
                       "--global-batch-size", "2", "--plot", str(tmp_path / "loss.png"),
                       "--stats", str(tmp_path / "stats.json"), "--compress", "none", "-"], stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    metrics = parse_records(result.stdout)  # stdout holds metrics records only
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # 3 sequences, 2 per step, 2 epochs
    for m in metrics:
        assert set(m) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
        assert m["loss"] > 0 and m["tokens"] > 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    assert stats["read"] == 3 and stats["kept"] == 3 and stats["steps"] == 4
    options = stats["options"]  # the run's TrainConfig, as given
    assert (options["out"], options["epochs"], options["data"], options["adam_beta2"]) == (
        str(tmp_path / "o"), 2, ["-"], 0.95)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "o"))
    AutoTokenizer.from_pretrained(str(tmp_path / "o"))
    # one checkpoint per epoch end stays for a later --resume
    assert sorted(p.name for p in (tmp_path / "o").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_delete_checkpoints_leaves_only_the_final_model(cli, tmp_path, tiny):
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(4), 1))
    out = tmp_path / "o"
    code, _, err = cli(["train", "--model", str(tiny), "--out", str(out), "--epochs", "2",
                        "--global-batch-size", "2", "--dtype", "fp32", "--delete-checkpoints", str(data)])
    assert code == 0, err
    assert list(out.glob("checkpoint-*")) == [] and list(out.glob(".*")) == []
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    # a stopped run keeps its checkpoint: deletion waits for the final model
    code, _, err = cli(["train", "--model", str(tiny), "--out", str(tmp_path / "s"), "--epochs", "2",
                        "--global-batch-size", "2", "--dtype", "fp32", "--delete-checkpoints",
                        "--stop-after", "1", str(data)])
    assert code == 0, err
    assert [p.name for p in (tmp_path / "s").glob("checkpoint-*")] == ["checkpoint-1"]


def test_empty_input_is_an_error(cli, tmp_path, tiny):
    code, out, err = cli(["train", "--model", str(tiny), "--out", str(tmp_path / "o"), "-"], stdin=b"")
    assert code == 1 and "no packed records" in err


@pytest.mark.slow
def test_stage_chaining_on_smollm2(tmp_path):
    """Stage 1 from the embedded default, stage 2 --init-from stage 1; the result generates."""
    import torch

    from dasd_cli.model.load import load_causal_lm, load_tokenizer
    from dasd_cli.core.chat import encode_example

    tokenizer = load_tokenizer(None)
    system = [{"role": "system", "content": "You are a helpful assistant."}]

    def packed(pairs):
        encoded = [encode_example(tokenizer, system + [{"role": "user", "content": q}], a) for q, a in pairs]
        samples = [(e.input_ids, e.prompt_len) for e in encoded]
        return pack(samples)

    low_t = [packed([("What is 2+3?", "<think>\n2+3=5\n</think>\n\n5"), ("Name a colour.", "Blue.")]),
             packed([("What is 4*2?", "<think>\n4*2=8\n</think>\n\n8")])]
    high_t = [packed([("What is 9-4?", "<think>\nNine minus four is five.\n</think>\n\n5")]),
              packed([("Say hi.", "Hi!"), ("What is 1+1?", "2")])]
    stage1 = write_file(tmp_path / "stage1.jsonl", low_t)
    stage2 = write_file(tmp_path / "stage2.jsonl", high_t)
    common = ["train", "--epochs", "1", "--global-batch-size", "1", "--compress", "none", "--lr", "1e-5",
              "--min-lr", "1e-6"]
    first = run_dasd(common + ["--out", str(tmp_path / "s1"), str(stage1)])
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    second = run_dasd(common + ["--init-from", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), str(stage2)])
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    s2_metrics = parse_records(second.stdout)
    assert len(s2_metrics) == 2 and s2_metrics[0]["lr"] == pytest.approx(1e-5)  # fresh schedule
    model = load_causal_lm(str(tmp_path / "s2"), dtype="fp32", device="cpu")
    stage2_tok = load_tokenizer(str(tmp_path / "s2"))
    prompt = stage2_tok.apply_chat_template(system + [{"role": "user", "content": "What is 2+2?"}],
                                            tokenize=False, add_generation_prompt=True)
    ids = stage2_tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = stage2_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()
