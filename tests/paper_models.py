"""Tiny random-init models of the paper's architectures, with their real vocabularies.

The paper's students are Qwen3 (dense, Qwen3-4B-Instruct-2507) and Qwen3-MoE
(Qwen3-30B-A3B); its teacher is gpt-oss-120b (MoE with attention sinks and alternating
sliding-window layers). Here each keeps its family's code path, vocabulary (151,936 and
201,088 embedding rows), special-token ids and tokenizer folder (built by
examples/paper_tokenizers.py), and shrinks everything else: hidden size 32, 2 layers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

QWEN3_VOCAB = 151936  # Qwen3's embedding rows (151,669 tokens, padded)
GPT_OSS_VOCAB = 201088
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)
QWEN3_IDS = dict(bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)  # <|endoftext|>, <|im_end|>
# <|startoftext|>, <|return|>, <|endoftext|>; gpt-oss's generation config also stops on
# <|endoftext|> and <|call|>
GPT_OSS_IDS = dict(bos_token_id=199998, eos_token_id=200002, pad_token_id=199999)
GPT_OSS_STOPS = [200002, 199999, 200012]


def qwen3_config(moe: bool = False):
    import transformers as tf

    if moe:  # Qwen3-30B-A3B's block (normalized top-k weights), 8 experts and 2 per token
        return tf.Qwen3MoeConfig(vocab_size=QWEN3_VOCAB, **SMALL, **QWEN3_IDS, num_experts=8,
                                 num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                 tie_word_embeddings=False)
    return tf.Qwen3Config(vocab_size=QWEN3_VOCAB, **SMALL, **QWEN3_IDS, tie_word_embeddings=True)


def gpt_oss_config():
    import transformers as tf

    return tf.GptOssConfig(vocab_size=GPT_OSS_VOCAB, **SMALL, **GPT_OSS_IDS, num_local_experts=4,
                           num_experts_per_tok=2, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"],
                           rope_parameters={"rope_type": "default", "rope_theta": 150000.0})


def save_model(config, tokenizer_folder: Path, out: Path, seed: int = 0,
               stop_ids: list[int] | None = None) -> Path:
    """A random-init model of ``config`` saved with the tokenizer folder's files."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if stop_ids is not None:
        model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=stop_ids,
                                                   pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    shutil.copytree(tokenizer_folder, out, dirs_exist_ok=True)
    return out


def build(tokenizers: dict[str, Path], out: Path) -> dict[str, Path]:
    """name -> folder: qwen3 (dense student, Instruct-2507 template), qwen3-moe (MoE
    student, Qwen3 template) and gpt-oss (the teacher, harmony template)."""
    return {
        "qwen3": save_model(qwen3_config(), tokenizers["qwen3-instruct-2507"], out / "qwen3", seed=1),
        "qwen3-moe": save_model(qwen3_config(moe=True), tokenizers["qwen3"], out / "qwen3-moe", seed=2),
        "gpt-oss": save_model(gpt_oss_config(), tokenizers["gpt-oss"], out / "gpt-oss", seed=3,
                              stop_ids=GPT_OSS_STOPS),
    }
