"""The paper's tokenizer pair (examples/paper_tokenizers.py) against quicktok-v1, and the
published chat templates (examples/chat_templates/) as they render.

Exactness: every text of tests/paper_corpus.py (math in ten languages, LaTeX, code in
eighteen languages, emoji, combining marks, special tokens inside text) tokenizes to the
same ids under the built folder (transformers' fast tokenizer) as under quicktok's
encoding with special tokens allowed. Two negative controls show the corpus sees the
parts that matter: Qwen3 without its NFC step, and o200k with Qwen's split regex, must
each disagree on some text.
"""

from __future__ import annotations

import datetime
import unicodedata

import pytest
from paper_corpus import corpus

pytestmark = pytest.mark.slow

ENCODINGS = {"gpt-oss": "o200k_harmony", "qwen3": "qwen3"}


@pytest.fixture(scope="module")
def sources() -> dict[str, list[str]]:
    return corpus()


@pytest.fixture(scope="module")
def texts(sources) -> list[str]:
    return [text for source in sources.values() for text in source]


def _mismatches(backend, encoding, texts: list[str]) -> tuple[int, int]:
    """(texts whose ids differ, tokens under ``backend``)."""
    ours = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    differ = sum(ids != encoding.encode_with_special(text) for ids, text in zip(ours, texts))
    return differ, sum(len(ids) for ids in ours)


@pytest.mark.parametrize("name", ["gpt-oss", "qwen3"])
def test_folders_tokenize_real_text_as_quicktok(paper_tokenizers, sources, texts, name: str) -> None:
    import quicktok
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(paper_tokenizers[name]))
    encoding = quicktok.get_encoding(ENCODINGS[name])
    assert len(tokenizer) == encoding.max_token_value + 1 == {"gpt-oss": 201088, "qwen3": 151669}[name]
    differ, tokens = _mismatches(tokenizer.backend_tokenizer, encoding, texts)
    print(f"{name}: {differ} mismatches in {len(texts)} texts from {len(sources)} sources, "
          f"{sum(map(len, texts))} characters, {tokens} tokens")
    assert differ == 0
    assert len(sources) >= 30 and len(texts) > 15000  # ten languages of math, 18 of code, ...
    # decoding gives the text back (Qwen3: its NFC form)
    for text in texts[::97]:
        want = unicodedata.normalize("NFC", text) if name == "qwen3" else text
        assert tokenizer.decode(encoding.encode_with_special(text)) == want


def test_the_corpus_sees_normalization_and_the_split_regex(paper_tokenizers, sources) -> None:
    import quicktok
    from paper_tokenizers import QWEN_PATTERN
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    texts = sources["handwritten"] + sources["mmath-vi"] + sources["humaneval"]
    qwen = Tokenizer.from_file(str(paper_tokenizers["qwen3"] / "tokenizer.json"))
    qwen.normalizer = None
    assert _mismatches(qwen, quicktok.get_encoding("qwen3"), texts)[0] > 0
    harmony = Tokenizer.from_file(str(paper_tokenizers["gpt-oss"] / "tokenizer.json"))
    harmony.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert _mismatches(harmony, quicktok.get_encoding("o200k_harmony"), texts)[0] > 0


def test_merges_from_ranks_rebuild_each_token_once() -> None:
    from paper_tokenizers import merges_from_ranks

    # ranks of a toy vocabulary: "ab" before "bc", so "abc" is built as ab + c
    ranks = [b"a", b"b", b"c", b"ab", b"bc", b"abc", b"xyz"]
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]


THINK = "<think>\nAdd them.\n</think>\n\n5"
HI = [{"role": "user", "content": "Hi"}]


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_qwen3_templates_render_as_published(paper_tokenizers) -> None:
    from transformers import AutoTokenizer

    from dasd_cli.core.chat import end_of_turn

    for name in ("qwen3", "qwen3-instruct-2507"):
        tokenizer = AutoTokenizer.from_pretrained(str(paper_tokenizers[name]))
        user = "<|im_start|>user\nHi<|im_end|>\n"
        assert _render(tokenizer, HI, add_generation_prompt=True) == user + "<|im_start|>assistant\n"
        system = [{"role": "system", "content": "Be brief."}, *HI]
        assert _render(tokenizer, system, add_generation_prompt=True) == \
            "<|im_start|>system\nBe brief.<|im_end|>\n" + user + "<|im_start|>assistant\n"
        # the final assistant turn keeps its reasoning; an earlier one loses it
        assert _render(tokenizer, [*HI, {"role": "assistant", "content": THINK}]) == \
            user + "<|im_start|>assistant\n" + THINK + "<|im_end|>\n"
        history = [*HI, {"role": "assistant", "content": THINK}, {"role": "user", "content": "Again"}]
        assert _render(tokenizer, history, add_generation_prompt=True) == \
            user + "<|im_start|>assistant\n5<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
        assert end_of_turn(tokenizer) == "<|im_end|>\n"
        no_think = _render(tokenizer, HI, add_generation_prompt=True, enable_thinking=False)
        # the hybrid Qwen3 template opens an empty think block; Instruct-2507 has no switch
        assert no_think == user + "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if name == "qwen3" else "")


def test_gpt_oss_template_renders_harmony(paper_tokenizers) -> None:
    import quicktok
    from transformers import AutoTokenizer

    from dasd_cli.core.chat import end_of_turn, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(paper_tokenizers["gpt-oss"]))
    today = datetime.date.today().strftime("%Y-%m-%d")
    system = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
              f"Knowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: medium\n\n"
              "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")
    messages = [{"role": "system", "content": "Be brief."}, *HI]
    prompt = render_prompt(tokenizer, messages)
    assert prompt == (system + "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
                      "<|start|>user<|message|>Hi<|end|><|start|>assistant")
    # reasoning in `thinking` goes to the analysis channel, the answer to final, then <|return|>
    full = _render(tokenizer, [*HI, {"role": "assistant", "thinking": "Add.", "content": "5"}])
    assert full.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|>Add."
                         "<|end|><|start|>assistant<|channel|>final<|message|>5<|return|>")
    assert end_of_turn(tokenizer) == "<|return|>"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids == quicktok.get_encoding("o200k_harmony").encode_with_special(prompt)
    assert ids[-2:] == [200006, 173781]  # <|start|> assistant
