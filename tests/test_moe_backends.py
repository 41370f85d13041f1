"""`dasd score` and `dasd sample` (hf backend) on tiny random MoE models with the
embedded tokenizer: packed scoring rows isolated, padded generation batches unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe_models import tiny_config
from helpers import REQUESTS, reference_logprobs

pytestmark = pytest.mark.slow


def _moe_folder(family: str, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from dasd_cli.model.load import load_tokenizer

    tokenizer = load_tokenizer(None)
    config = tiny_config(family, attn="sdpa")
    config.vocab_size = len(tokenizer)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_packed_scoring_rows_stay_isolated_on_moe(tmp_path, family, monkeypatch):
    from dasd_cli.backends import hf_score
    from dasd_cli.model.load import load_causal_lm, load_tokenizer

    folder = _moe_folder(family, tmp_path / family)
    model = load_causal_lm(str(folder), dtype="fp32", device="cpu")
    tokenizer = load_tokenizer(str(folder))
    assert model.config._experts_implementation == "eager"  # model/moe.py's FASTEST_EXPERTS on CPU
    assert hf_score._packable(model)
    rows = []
    real = hf_score._score_packed
    monkeypatch.setattr(hf_score, "_score_packed", lambda *a: rows.append(len(a[2])) or real(*a))
    got = {s.key: s for s in hf_score.score_batches(model, tokenizer, REQUESTS, batch_tokens=160)}
    assert max(rows) > 1  # several samples shared a row
    for request in REQUESTS:
        expected, offsets = reference_logprobs(model, tokenizer, request)
        assert got[request.key].offsets == offsets
        assert got[request.key].logprobs == pytest.approx(expected, abs=1e-4)


def test_sampling_a_moe_teacher_is_unchanged_by_its_batch(tmp_path):
    """Greedy generations of a padded batch equal each prompt generated alone (padding
    tokens are routed too, but must not change another row's routing)."""
    from dasd_cli.backends.base import GenerationRequest
    from dasd_cli.backends.hf import HFBackend

    folder = _moe_folder("qwen3_moe", tmp_path / "moe")
    prompts = ["What is 2+2?", "Write one long sentence about the sea and the sky.", "Hi"]
    requests = [GenerationRequest(key=f"q{i}", messages=[{"role": "user", "content": q}], temperature=0.0,
                                  max_tokens=8, seed=i) for i, q in enumerate(prompts)]
    backend = HFBackend(model=str(folder), dtype="fp32", device="cpu", batch_size=8)
    together = {g.key: g for g in backend.generate(requests)}
    for request in requests:
        alone = next(iter(backend.generate([request])))
        mine = together[request.key]
        assert mine.token_ids == alone.token_ids
        assert mine.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
