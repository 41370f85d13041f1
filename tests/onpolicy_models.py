"""Tiny random models for on-policy tests: every token one printable ASCII character.

The tokenizer is byte-level BPE without merges, so every token sequence a model samples
is its own canonical tokenization: re-tokenizing a sample gives the sampled tokens back,
as it does for most samples of a real model. A chat template with special tokens frames
the turns; the end-of-turn token is the end-of-sequence token.
"""

from __future__ import annotations

from pathlib import Path


def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    printable = [chr(c) for c in range(33, 127)] + ["\u0120"]  # byte-level's stand-in for a space
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(printable)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    fast.add_special_tokens({"eos_token": "<|end|>",
                             "additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    fast.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
                          "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return fast


def char_model(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama over :func:`char_tokenizer`, saved with it as a transformers folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
