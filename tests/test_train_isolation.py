"""Sample isolation: a sample's logits inside a packed sequence equal its logits alone."""

from __future__ import annotations

import pytest
import torch

from dasd_cli.model import packed as forward
from helpers import tiny_llama

LENGTHS = (7, 12, 5)  # three samples packed into one sequence of 24 tokens


def _packed(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    samples = [torch.randint(3, vocab, (n,), generator=gen) for n in LENGTHS]
    input_ids = torch.cat(samples)[None]
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return samples, input_ids, position_ids


def _max_isolation_error(model, vocab: int) -> float:
    samples, input_ids, position_ids = _packed(vocab)
    with torch.no_grad():
        packed = forward.packed_logits(model, input_ids, position_ids)[0]
        worst, start = 0.0, 0
        for sample in samples:
            alone = model(input_ids=sample[None]).logits[0]
            worst = max(worst, float((packed[start:start + len(sample)] - alone).abs().max()))
            start += len(sample)
    return worst


def _attn(name: str) -> str:
    from dasd_cli.model import attention

    return attention.register() if name == "segmented" else name


@pytest.mark.parametrize("attn", ["sdpa", "eager", "segmented"])
def test_tiny_llama_packed_equals_alone(attn):
    assert _max_isolation_error(tiny_llama(_attn(attn)), 97) <= 1e-4


def test_position_ids_alone_would_leak():
    """The check above can fail: a plain causal mask over the packed row leaks."""
    model = tiny_llama("sdpa")
    samples, input_ids, position_ids = _packed(97)
    with torch.no_grad():
        leaky = model(input_ids=input_ids, position_ids=position_ids,
                      attention_mask=torch.ones_like(input_ids)).logits[0]
        alone = model(input_ids=samples[1][None]).logits[0]
    assert float((leaky[7:19] - alone).abs().max()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager", "segmented"])
def test_smollm2_packed_equals_alone(attn):
    from dasd_cli.model.load import load_causal_lm

    model = load_causal_lm(None, dtype="fp32", device="cpu", attn_implementation=_attn(attn))
    assert _max_isolation_error(model, model.config.vocab_size) <= 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager", "segmented"])
def test_a_sliding_window_the_backend_would_drop_is_refused(attn):
    """Mistral-style windowed attention: packed samples longer than the window would be
    trained under full causal attention on these backends, so they are refused."""
    from transformers import MistralConfig, MistralForCausalLM

    from dasd_cli.errors import UsageError
    from dasd_cli.model import attention

    impl = attention.register() if attn == "segmented" else attn
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           sliding_window=8, attn_implementation=impl)
    model = MistralForCausalLM(config).eval()
    samples, input_ids, position_ids = _packed(97)  # the longest sample has 12 tokens
    with pytest.raises(UsageError, match="12-token sample is longer than this model's 8-token sliding"):
        forward.packed_logits(model, input_ids, position_ids)
    model.config.sliding_window = 12  # every sample fits the window: exact, so allowed
    with torch.no_grad():
        packed = forward.packed_logits(model, input_ids, position_ids)[0]
        alone = model(input_ids=samples[1][None]).logits[0]
    assert float((packed[7:19] - alone).abs().max()) <= 1e-4


def test_segmented_attention_matches_causal_sdpa_per_sample_with_gradients():
    """Output and q/k/v gradients equal causal sdpa run on each sample on its own."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from dasd_cli.model.attention import segmented_attention

    gen = torch.Generator().manual_seed(0)
    length, heads, kv_heads, dim = sum(LENGTHS), 4, 2, 8

    def leaf(h):  # [1, H, L, D] as a transposed view, the layout the models pass
        return torch.randn(1, length, h, dim, generator=gen).transpose(1, 2).requires_grad_()

    q, k, v = leaf(heads), leaf(kv_heads), leaf(kv_heads)
    grad_out = torch.randn(1, length, heads, dim, generator=gen)
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    out, _ = segmented_attention(SimpleNamespace(training=True), q, k, v, None, scaling=0.3,
                                 cu_seq_lens_q=bounds)
    assert out.shape == (1, length, heads, dim) and out.is_contiguous()
    out.backward(grad_out)
    got = [out.detach(), q.grad, k.grad, v.grad]
    for t in (q, k, v):
        t.grad = None
    pieces = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                             scale=0.3, enable_gqa=True)
              for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    ref = torch.cat(pieces, dim=2).transpose(1, 2)
    ref.backward(grad_out)
    for a, b in zip(got, [ref.detach(), q.grad, k.grad, v.grad]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
