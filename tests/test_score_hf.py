"""Student log-probs from backends/hf_score.py equal a plain reference forward pass.

The reference: one unpadded sequence at a time, full logits, full log-softmax, gather.
"""

from __future__ import annotations

import pytest

from dasd_cli.backends.hf_score import plan_batches, plan_rows
from helpers import REQUESTS, reference_logprobs

def test_plan_batches_respects_budget_and_sorts_longest_first():
    lengths = [5, 50, 20, 20, 100, 7]
    batches = plan_batches(lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [4]  # longer than the budget: alone
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 60 or len(batch) == 1
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_plan_rows_fills_best_fit_within_budget():
    lengths = [5, 50, 20, 20, 100, 7, 30]
    rows = plan_rows(lengths, 60)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert rows[0] == [4]  # longer than the budget: alone
    assert all(sum(lengths[i] for i in r) <= 60 for r in rows[1:])
    # dasd pack's best-fit decreasing: each into the row with the least room that fits it
    # (the 7 into 30 + 20, which has 10 left like 50's row but reached it last; the 5 beside 50)
    assert [sorted((lengths[i] for i in r), reverse=True) for r in rows[1:]] == [[50, 5], [30, 20, 7], [20]]


@pytest.fixture(scope="module")
def tokenizer():
    from dasd_cli.model.load import load_tokenizer

    return load_tokenizer(None)


@pytest.mark.slow
# bf16 keeps 8 mantissa bits: a logit near 30 rounds by up to ~0.12, and padded batches
# run other kernels than one unpadded sequence, so per-token differences of ~0.1 are bf16
# noise; the mean bound catches real misalignment.
# fp32 differs only in summation order (GEMM blocking follows the row count), far below
# any misalignment (differences of whole nats).
@pytest.mark.parametrize("dtype,max_tolerance,mean_tolerance", [("fp32", 1e-4, 5e-5), ("bf16", 0.25, 0.02)])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_scores_equal_reference_forward(tokenizer, monkeypatch, packed, dtype, max_tolerance, mean_tolerance):
    from dasd_cli.backends import hf_score
    from dasd_cli.model.load import load_causal_lm

    model = load_causal_lm(None, dtype=dtype, device="cpu")
    assert hf_score._packable(model)  # SmolLM2 on sdpa takes the segmented attention
    if not packed:  # the fallback for models that cannot switch attention
        monkeypatch.setattr(hf_score, "_packable", lambda model: False)
    seen = []
    real = hf_score._score_packed if packed else hf_score._score_padded
    monkeypatch.setattr(hf_score, real.__name__, lambda *a: seen.append(len(a[2])) or real(*a))
    # A small budget forces several rows (or padded batches) of different sizes.
    got = {s.key: s for s in hf_score.score_batches(model, tokenizer, REQUESTS, batch_tokens=160)}
    assert sum(seen) == len(REQUESTS) and len(seen) > 1 and max(seen) > 1
    assert model.config._attn_implementation == "sdpa"  # restored after each packed row
    assert set(got) == {r.key for r in REQUESTS}
    worst, total, count = 0.0, 0.0, 0
    for request in REQUESTS:
        expected, offsets = reference_logprobs(model, tokenizer, request)
        scored = got[request.key]
        assert scored.offsets == offsets
        assert len(scored.logprobs) == len(expected) == len(offsets)
        for mine, ref in zip(scored.logprobs, expected):
            worst = max(worst, abs(mine - ref))
            total, count = total + abs(mine - ref), count + 1
    assert worst <= max_tolerance, f"{dtype}: max |difference| {worst:.2e} > {max_tolerance}"
    assert total / count <= mean_tolerance, f"{dtype}: mean |difference| {total / count:.2e}"
    assert len(got["empty"].logprobs) == 0
    assert all(lp <= 0 for s in got.values() for lp in s.logprobs)


def test_models_with_windowed_or_capped_attention_are_scored_padded():
    from types import SimpleNamespace

    from dasd_cli.backends.hf_score import _packable

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", **config),
                               _supports_attention_backend=True)

    assert _packable(model())
    assert _packable(model(layer_types=["full_attention"] * 2, sliding_window=4096))  # Qwen3 default
    assert not _packable(model(layer_types=["sliding_attention", "full_attention"], sliding_window=512))
    assert not _packable(model(sliding_window=4096))  # Mistral-style, every layer windowed
    assert _packable(model(sliding_window=4096, use_sliding_window=False))
    assert not _packable(model(attn_logit_softcapping=50.0))
    assert not _packable(SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"),
                                         _supports_attention_backend=False))


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_target_logprobs_equal_full_log_softmax_across_chunks(softcap):
    """Chunked, in-place log-sum-exp = gather from a full fp32 log-softmax, chunk edges included."""
    import torch

    from dasd_cli.backends.hf_score import target_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16) * 4
    targets = torch.randint(0, 50, (23,))
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    with torch.inference_mode():
        for chunk_elements in (50, 7 * 50, 10 ** 6):  # one row, 7 rows (a ragged last chunk), all
            got = target_logprobs(hidden, head, targets, softcap=softcap, chunk_elements=chunk_elements)
            assert torch.allclose(got, expected, atol=1e-5), (chunk_elements, (got - expected).abs().max())
