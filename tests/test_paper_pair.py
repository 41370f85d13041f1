"""The paper's teacher and students, tiny: every stage on the real tokenizers and templates.

gpt-oss (o200k_harmony, harmony template, MoE with attention sinks) teaches; Qwen3 dense
(Qwen3-Instruct-2507 template) and Qwen3-MoE (Qwen3 template) learn. The models are
random-init with the real vocabularies (tests/paper_models.py), the tokenizers those of
examples/paper_tokenizers.py. What runs: `dasd import` of harmony token streams, `score`
across the two tokenizers, `pack` under the real templates, `train` of the MoE student
under ZeRO-3 on 2 CPU ranks, `sample` from gpt-oss through its harmony template, `eval`
of the student's sampled answers.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
from helpers import parse_records, run_dasd, to_jsonl, write_file

pytestmark = pytest.mark.slow

RESPONSES = [  # (question, response in dasd's canonical think form)
    ("What is 17 * 3?", "<think>\nMultiply: 17 * 3 = 51. Check: 51 / 3 = 17.\n</think>\n\nThe answer is $\\boxed{51}$."),
    ("日本の首都は？", "<think>\n日本の首都は東京です。確認しました 🗼.\n</think>\n\n東京です。"),
    ("Écris « café » décomposé.", "<think>\nLe mot: cafe\u0301. Voilà!\n</think>\n\nC'est « café »."),
]


@pytest.fixture(scope="module")
def models(paper_tokenizers, tmp_path_factory) -> dict[str, Path]:
    import paper_models

    return paper_models.build(paper_tokenizers, tmp_path_factory.mktemp("paper-models"))


def _records() -> list[dict]:
    return [{"id": f"r{i}", "prompt_id": f"p{i}", "domain": "math",
             "messages": [{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": question}],
             "response": response, "finish_reason": "stop"}
            for i, (question, response) in enumerate(RESPONSES)]


def _samples(packed: list[dict]) -> dict[str, tuple[list[int], list[int]]]:
    """record id -> (input_ids, labels) of each sample in packed rows (positions restart at 0)."""
    out = {}
    for row in packed:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        for record_id, a, b in zip(row["ids"], starts, starts[1:]):
            out[record_id] = (row["input_ids"][a:b], row["labels"][a:b])
    return out


@pytest.mark.parametrize("name", ["qwen3", "qwen3-instruct-2507"])
def test_pack_equals_the_chat_template_with_the_prompt_masked(paper_tokenizers, cli, name: str) -> None:
    from transformers import AutoTokenizer

    folder = paper_tokenizers[name]
    code, out, err = cli(["pack", "--tokenizer", str(folder), "--cutoff-len", "256", "--compress", "none", "-"],
                         stdin=to_jsonl(_records()))
    assert code == 0, err
    samples = _samples(parse_records(out))
    assert sorted(samples) == ["r0", "r1", "r2"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for record in _records():
        ids, labels = samples[record["id"]]
        messages = record["messages"]
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": record["response"]}],
                                             tokenize=False)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert full.startswith(prompt) and full.endswith("<|im_end|>\n")
        assert ids == tokenizer(full, add_special_tokens=False)["input_ids"]
        masked = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert labels[:masked] == [-100] * masked
        assert labels[masked:] == ids[masked:] and ids[masked] == 151667  # <think>


BETWEEN_IDS = [200007, 200006, 173781, 200005, 17196, 200008]  # <|end|><|start|>assistant<|channel|>final<|message|>


@pytest.fixture(scope="module")
def imported(paper_tokenizers, tmp_path_factory) -> tuple[list[dict], str]:
    """`dasd import` of the released schema with gpt-oss's own harmony token streams."""
    import released_slice as released
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(paper_tokenizers["gpt-oss"]))
    assert released.encode(tokenizer, released.BETWEEN) == BETWEEN_IDS
    folder = tmp_path_factory.mktemp("released")
    data = released.write_jsonl(folder / "data.jsonl", released.data_rows())
    logprobs = released.write_jsonl(folder / "logprob.jsonl", released.logprob_rows(tokenizer))
    proc = run_dasd(["import", "--compress", "none", "--logprobs", str(logprobs), "--tokenizer",
                     str(paper_tokenizers["gpt-oss"]), str(data)], timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return parse_records(proc.stdout), proc.stderr.decode()


def test_import_of_harmony_token_streams(paper_tokenizers, imported) -> None:
    import released_slice as released
    from transformers import AutoTokenizer

    records, err = imported
    released.check_slice(AutoTokenizer.from_pretrained(str(paper_tokenizers["gpt-oss"])), records, err)


def _geometric(logprobs: list[float]) -> float:
    return math.exp(sum(logprobs) / len(logprobs))


def test_score_across_tokenizers_o200k_teacher_qwen3_student(models, imported, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records, _ = imported
    data = write_file(tmp_path / "imported.jsonl", records)
    proc = run_dasd(["score", "--model", str(models["qwen3"]), "--dtype", "fp32", "--accept-logprobs", "unknown",
                     "--compress", "none", str(data)], timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    scored = parse_records(proc.stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(models["qwen3"]))
    model = AutoModelForCausalLM.from_pretrained(str(models["qwen3"]), dtype=torch.float32).eval()
    for record in scored:
        das, sampler = record["das"], record["sampler"]
        assert sum(das["counts"].values()) == len(das["sentences"]) > 0
        # the reference: the student's template and tokenizer called directly, one forward pass
        prompt = tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(record["response"], add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([prompt_ids + response["input_ids"]])
        with torch.inference_mode():
            rows = model(input_ids=ids).logits.float().log_softmax(-1)[0, len(prompt_ids) - 1:-1]
        student = rows.gather(1, ids[0, len(prompt_ids):, None])[:, 0].tolist()
        starts = [a for a, _ in response["offset_mapping"]]
        for sentence in das["sentences"]:
            a, b = sentence["start"], sentence["end"]
            want_t = _geometric([lp for lp, o in zip(sampler["logprobs"], sampler["offsets"]) if a <= o < b])
            want_s = _geometric([lp for lp, o in zip(student, starts) if a <= o < b])
            assert sentence["p_teacher"] == pytest.approx(want_t, rel=1e-5)
            assert sentence["p_student"] == pytest.approx(want_s, rel=1e-4)


def test_sample_from_gpt_oss_through_its_harmony_template(models, cli) -> None:
    import quicktok

    from dasd_cli.backends.base import GenerationRequest
    from dasd_cli.backends.hf import HFBackend
    from dasd_cli.core.chat import render_prompt

    backend = HFBackend(str(models["gpt-oss"]), dtype="fp32", device="cpu")
    assert set(backend.stop_ids) == {200002, 199999, 200012}  # <|return|>, <|endoftext|>, <|call|>
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = render_prompt(backend.tokenizer, messages)
    assert prompt.startswith("<|start|>system<|message|>") and prompt.endswith("<|start|>user<|message|>What is 2+2?"
                                                                                "<|end|><|start|>assistant")
    request = GenerationRequest(key="q", messages=messages, temperature=1.0, max_tokens=8, seed=0)
    assert backend.encode_request(request) == quicktok.get_encoding("o200k_harmony").encode_with_special(prompt)
    prompts = [{"id": "q", "prompt": "What is 2+2?", "domain": "math", "reference": {"answer": "4"}}]
    code, out, err = cli(["sample", "--model", str(models["gpt-oss"]), "--dtype", "fp32", "--max-tokens", "12",
                          "-n", "2", "--compress", "none", "-"], stdin=to_jsonl(prompts))
    assert code == 0, err
    records = parse_records(out)
    assert [r["id"] for r in records] == ["q@0.6#0", "q@0.6#1"]
    for record in records:
        sampler = record["sampler"]
        assert sampler["logprobs_mode"] == "raw" and record["finish_reason"] in ("stop", "length")
        assert len(sampler["logprobs"]) == len(sampler["offsets"]) > 0


def test_eval_of_the_students_sampled_answers(models, tmp_path) -> None:
    prompts = [{"id": f"q{i}", "prompt": f"What is {i} + {i}? Answer with \\boxed{{N}}.", "domain": "math",
                "reference": {"answer": str(2 * i)}} for i in range(3)]
    sampled = run_dasd(["sample", "--model", str(models["qwen3"]), "--dtype", "fp32", "--max-tokens", "16",
                        "-n", "2", "--compress", "none", "-"], stdin=to_jsonl(prompts), timeout=300)
    assert sampled.returncode == 0, sampled.stderr.decode()[-3000:]
    answers = parse_records(sampled.stdout)
    # one answer replaced by a correct one, so the evaluation has something to find
    answers[0]["response"] = "<think>\n0 + 0 = 0.\n</think>\n\n$\\boxed{0}$"
    proc = run_dasd(["eval", "--stats", str(tmp_path / "stats.json"), "--compress", "none", "-"],
                    stdin=to_jsonl(answers), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    evaluated = parse_records(proc.stdout)
    assert [r["id"] for r in evaluated] == [r["id"] for r in answers]
    assert evaluated[0]["eval"]["correct"] is True
    assert all(isinstance(r["eval"]["correct"], bool) and r["eval"]["reason"] for r in evaluated)
    import json

    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["accuracy"] == pytest.approx(sum(r["eval"]["correct"] for r in evaluated) / 6)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed not installed (DS_BUILD_OPS=0 pip install deepspeed)")
def test_moe_student_trains_under_zero3_on_two_cpu_ranks(models, paper_tokenizers, cli, tmp_path) -> None:
    from moe_models import launch_two_ranks, zero3_config, zero3_env

    code, out, err = cli(["pack", "--tokenizer", str(paper_tokenizers["qwen3"]), "--cutoff-len", "64",
                          "--compress", "none", "-"], stdin=to_jsonl(_records()))
    assert code == 0, err
    data = tmp_path / "packed.jsonl"
    data.write_bytes(out)
    assert len(parse_records(out)) >= 2  # a sequence for each rank
    args = ["train", "--model", str(models["qwen3-moe"]), "--epochs", "1", "--global-batch-size", "2",
            "--no-shuffle", "--dtype", "fp32", "--compress", "none", "--router-aux-loss-coef", "0.01",
            "--data", str(data)]
    single = run_dasd(args + ["--out", str(tmp_path / "single")], env=zero3_env(), timeout=300)
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    launched = launch_two_ranks(["-m", "dasd_cli.cli", *args, "--out", str(tmp_path / "zero3"),
                                 "--deepspeed", str(zero3_config(tmp_path))], timeout=600)
    assert launched is not None, "ZeRO-3 on the Qwen3-MoE student hung"
    assert launched.returncode == 0, launched.stderr.decode()[-3000:]
    want, got = parse_records(single.stdout), parse_records(launched.stdout)
    assert len(want) == len(got) >= 1
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["aux_loss"] == pytest.approx(a["aux_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert (tmp_path / "zero3" / "config.json").is_file()
    assert os.path.getsize(tmp_path / "zero3" / "model.safetensors") > 0
