"""`dasd sample --backend hf` on the embedded SmolLM2-135M: contract, raw log-probs,
seeding, --max-tokens-ratio and --continue. Slow: loads a real model (kept small)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from helpers import parse_records, to_jsonl
from dasd_cli.backends.base import GenerationRequest
from dasd_cli.core.chat import render_prompt, tokenize_with_offsets

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2+2?", "Write one sentence about the sea.", "¿Cuál es la capital de Francia?",
             "Translate 'thank you' into Japanese."]


def backend(dtype: str = "fp32") -> Any:
    from dasd_cli.backends.hf import HFBackend

    return HFBackend(dtype=dtype, batch_size=8)


def requests(temperature: float, max_tokens: int = 16, n: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"q{i}#{k}", messages=[{"role": "user", "content": q}],
                              temperature=temperature, max_tokens=max_tokens, seed=1000 * i + k)
            for i, q in enumerate(QUESTIONS) for k in range(n)]


def check_offsets(record: dict[str, Any], start: int = 0) -> None:
    """Offsets are non-decreasing, one per log-prob, inside the response."""
    sampler = record["sampler"]
    offsets, logprobs = sampler["offsets"], sampler["logprobs"]
    assert len(offsets) == len(logprobs)
    assert all(a <= b for a, b in zip(offsets, offsets[1:]))
    assert not offsets or (offsets[0] == start and offsets[-1] < len(record["response"]))
    assert all(lp <= 0.0 for lp in logprobs)


def test_records_pass_the_contract(cli) -> None:
    prompts = [{"id": f"q{i}", "prompt": q, "domain": "other"} for i, q in enumerate(QUESTIONS)]
    code, out, err = cli(["sample", "--dtype", "fp32", "--max-tokens", "16", "-n", "2", "-t", "0.6",
                          "-t", "1.0", "--compress", "none", "-"], stdin=to_jsonl(prompts))
    assert code == 0, err
    records = parse_records(out)
    assert [r["id"] for r in records] == [f"q{i}@{t}#{k}" for i in range(len(QUESTIONS))
                                          for t in ("0.6", "1") for k in range(2)]
    assert "dasd sample: read 4, wrote 16" in err
    from dasd_cli.model.load import load_tokenizer

    tokenizer = load_tokenizer(None)
    canonical = 0
    for record in records:
        assert record["prompt_id"] == record["id"].split("@")[0] and record["domain"] == "other"
        assert record["finish_reason"] in ("stop", "length")
        sampler = record["sampler"]
        assert sampler["model"] == "SmolLM2-135M-Instruct" and sampler["logprobs_mode"] == "raw"
        assert sampler["temperature"] in (0.6, 1.0) and sampler["top_p"] == 1.0
        check_offsets(record)
        _ids, offsets = tokenize_with_offsets(tokenizer, record["response"])
        if offsets == sampler["offsets"]:
            canonical += 1
    # Sampled sequences are usually the canonical tokenization of their text.
    print(f"canonical re-tokenization: {canonical}/{len(records)}")
    assert canonical >= 0.75 * len(records)


def test_generated_ids_decode_and_retokenize() -> None:
    """On the backend: text == decode(ids); where re-tokenizing gives the ids, offsets match."""
    engine = backend()
    generations = list(engine.generate(requests(1.0, n=2)))
    assert sorted(g.key for g in generations) == sorted(r.key for r in requests(1.0, n=2))
    matched = 0
    for g in generations:
        assert engine.tokenizer.decode(g.token_ids) == g.text
        ids, offsets = tokenize_with_offsets(engine.tokenizer, g.text)
        if ids == g.token_ids:
            matched += 1
            assert offsets == g.offsets
    print(f"sampled ids == canonical ids: {matched}/{len(generations)}")
    assert matched >= 0.75 * len(generations)


# bf16: the cached incremental decode and the full forward round differently; the bounds
# allow that rounding and stay below the shift that temperature-scaled log-probs would show.
@pytest.mark.parametrize("dtype,tolerance,mean_tolerance", [("fp32", 2e-3, 1e-4), ("bf16", 0.5, 0.1)])
def test_logprobs_are_raw(dtype: str, tolerance: float, mean_tolerance: float) -> None:
    """Stored log-probs at T=0.6 equal a teacher-forced forward's log-softmax of raw logits."""
    import torch

    engine = backend(dtype)
    worst, raw_gaps, scaled_gaps = 0.0, [], []
    for g, request in zip(sorted(engine.generate(requests(0.6)), key=lambda g: g.key),
                          sorted(requests(0.6), key=lambda r: r.key)):
        prompt_ids = engine.encode_request(request)
        ids = torch.tensor([prompt_ids + g.token_ids])
        with torch.inference_mode():
            logits = engine.model(ids).logits[0, len(prompt_ids) - 1:-1].float()
        picked = torch.tensor(g.token_ids)[:, None]
        forced = torch.log_softmax(logits, -1).gather(1, picked)[:, 0]
        scaled = torch.log_softmax(logits / 0.6, -1).gather(1, picked)[:, 0]
        stored = torch.tensor(g.logprobs)
        worst = max(worst, (forced - stored).abs().max().item())
        raw_gaps.append((forced - stored).abs().mean().item())
        scaled_gaps.append((scaled - stored).abs().mean().item())
    raw_gap, scaled_gap = sum(raw_gaps) / len(raw_gaps), sum(scaled_gaps) / len(scaled_gaps)
    print(f"{dtype}: max |stored - forced| = {worst:.2e}, mean {raw_gap:.2e}; "
          f"mean |stored - T-scaled| = {scaled_gap:.2e}")
    assert worst < tolerance and raw_gap < mean_tolerance
    assert raw_gap < scaled_gap / 3  # the stored values are raw, not temperature-scaled


def test_logprobs_stay_raw_when_the_model_ships_a_repetition_penalty(tmp_path) -> None:
    """A generation_config.json with a repetition penalty (Qwen2.5-Instruct ships 1.05)
    must neither change the samples nor the stored log-probs: they are raw."""
    import json
    import shutil

    from dasd_cli.backends.hf import HFBackend
    from dasd_cli.model.load import resolve_model

    plain = resolve_model(None)
    penalized = tmp_path / "penalized"
    shutil.copytree(plain, penalized)
    settings_file = penalized / "generation_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    settings_file.write_text(json.dumps(settings | {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}))
    asked = requests(1.0)[:2]
    want = {g.key: g for g in HFBackend(str(plain), dtype="fp32").generate(asked)}
    got = {g.key: g for g in HFBackend(str(penalized), dtype="fp32").generate(asked)}
    for key, g in got.items():
        assert g.token_ids == want[key].token_ids
        assert g.logprobs == pytest.approx(want[key].logprobs, abs=1e-5)
        assert g.logprobs_mode == "raw"


def test_sampling_is_seeded_per_request_not_per_batch() -> None:
    engine = backend()
    together = {g.key: g.token_ids for g in engine.generate(requests(1.0))}
    alone = next(iter(engine.generate([requests(1.0)[2]])))
    assert alone.token_ids == together[alone.key]
    assert len(set(map(tuple, together.values()))) == len(together)


def test_max_tokens_ratio_caps(cli) -> None:
    from dasd_cli.model.load import load_tokenizer

    tokenizer = load_tokenizer(None)
    teacher_answer = "The sky looks blue because air scatters short wavelengths of sunlight more."
    count = len(tokenize_with_offsets(tokenizer, teacher_answer)[0])
    record = {"id": "s1@0.6#0", "prompt_id": "s1", "prompt": "Why is the sky blue? Answer at length.",
              "response": teacher_answer, "das": {"score": 3}, "teacher": {"model": "big"}}
    code, out, err = cli(["sample", "--dtype", "fp32", "--max-tokens-ratio", "0.5", "-t", "1.0",
                          "-n", "3", "--compress", "none", "-"], stdin=to_jsonl([record]))
    assert code == 0, err
    cap = math.floor(0.5 * count)
    for out_record in parse_records(out):
        n_tokens = len(out_record["sampler"]["logprobs"])
        assert n_tokens <= cap
        assert out_record["finish_reason"] == "length" or n_tokens < cap
        assert out_record["prompt_id"] == "s1" and "das" not in out_record
        # the input's sampler block, under its legacy name, described the response replaced
        assert out_record["sampler"]["model"] == "SmolLM2-135M-Instruct" and "teacher" not in out_record
        assert out_record["sampler"]["tokenizer"].startswith("sha256:")
    assert any(r["finish_reason"] == "length" and len(r["sampler"]["logprobs"]) == cap
               for r in parse_records(out))


def test_continue_keeps_prefix_and_scores_teacher_part_only(cli) -> None:
    student = ("First, I add the two numbers together. Two plus two makes four.\n"
               "Then I double-check the sum by counting on my fingers. One, two, three, four. "
               "So the result is four, and I am fairly sure about it. Let me also consider")
    records = [{"id": f"st{i}@1#0", "prompt_id": f"q{i}", "prompt": "What is 2+2?",
                "response": student, "finish_reason": "length"} for i in range(3)]
    code, out, err = cli(["sample", "--continue", "--dtype", "fp32", "--max-tokens", "16",
                          "--compress", "none", "-"], stdin=to_jsonl(records))
    assert code == 0, err
    outs = parse_records(out)
    assert [r["id"] for r in outs] == [f"st{i}@1#0+cont@0.6#0" for i in range(3)]
    cuts = set()
    for r in outs:
        prefix_chars = r["prefix_chars"]
        cuts.add(prefix_chars)
        assert prefix_chars > 0.5 * len(student)
        assert r["response"][:prefix_chars] == student[:prefix_chars]
        assert student[prefix_chars - 1] in ".\n"  # snapped to a sentence or line end
        check_offsets(r, start=prefix_chars)
        assert len(r["sampler"]["logprobs"]) <= 16
    assert len(cuts) > 1  # the cut is drawn per record
    # The continuation is conditioned on the prefix: the prompt the model saw ends with it.
    from dasd_cli.backends.hf import HFBackend

    engine = HFBackend(dtype="fp32")
    request = GenerationRequest(key="x", messages=[{"role": "user", "content": "What is 2+2?"}],
                                temperature=0.6, prefix="Two plus")
    text = engine.tokenizer.decode(engine.encode_request(request))
    assert text == render_prompt(engine.tokenizer, request.messages) + "Two plus"
