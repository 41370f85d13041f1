"""DAS alignment and classification: golden values computed by hand, and tokens from two
different tokenizers on the same text checked against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dasd_cli.core.das import (TokenLogprobs, analyze, check_logprobs_mode, classify, das_record,
                               geometric_mean, teacher_tokens)
from dasd_cli.errors import RecordError
from dasd_cli.core.segment import sentence_spans

LN = math.log


def test_golden_two_models_three_sentences():
    text = "Hi there. Bye now. Ok."
    # sentences: [0,9) "Hi there." [9,18) " Bye now." [18,22) " Ok."
    teacher = TokenLogprobs([LN(0.9), LN(0.8), LN(0.5), LN(0.5), LN(1.0)], [0, 2, 9, 13, 18])
    student = TokenLogprobs([LN(0.4), LN(0.1), LN(0.6), LN(0.7), LN(0.8)], [0, 3, 9, 18, 21])
    result = analyze(text, teacher, student, beta=0.1)
    assert result.spans == [(0, 9), (9, 18), (18, 22)]
    p_t, p_s = result.p_sentences
    assert p_t == pytest.approx([math.sqrt(0.72), 0.5, 1.0])
    assert p_s == pytest.approx([0.2, 0.6, math.sqrt(0.56)])
    # diffs: 0.8485-0.2 > .1 teacher; 0.5-0.6 = -0.1 shared (not < -beta); 1-0.748 teacher
    assert result.types == ["teacher", "shared", "teacher"]
    assert result.counts == {"teacher": 2, "shared": 1, "student": 0}
    assert result.score == 2 and result.merged == 0
    assert result.p_response[0] == pytest.approx((0.9 * 0.8 * 0.5 * 0.5 * 1.0) ** (1 / 5))
    assert result.p_response[1] == pytest.approx((0.4 * 0.1 * 0.6 * 0.7 * 0.8) ** (1 / 5))
    das = das_record(result, student="S", beta=0.1)
    assert list(das) == ["student", "beta", "counts", "score", "p_teacher", "p_student", "sentences"]
    assert das["sentences"][1] == {"start": 9, "end": 18, "p_teacher": 0.5, "p_student": 0.6,
                                   "type": "shared"}
    assert das["score"] == 2 and das["student"] == "S"


def test_student_type_and_margin_boundaries():
    assert classify(0.2, 0.5, 0.1) == "student"
    assert classify(0.5, 0.4, 0.1) == "shared"  # exactly beta apart (up to rounding) stays shared
    assert classify(0.5, 0.39, 0.1) == "teacher"
    assert classify(0.3, 0.5, 0.25) == "shared"


def test_sentence_without_tokens_is_merged_into_previous_and_counted():
    text = "Go. No. Yes."
    # "Go." [0,3) " No." [3,7) " Yes." [7,12); the teacher's token at 0 spans "Go. No."
    teacher = TokenLogprobs([LN(0.5), LN(0.8)], [0, 7])
    student = TokenLogprobs([LN(0.9), LN(0.3), LN(0.2)], [0, 3, 7])
    result = analyze(text, teacher, student)
    assert result.spans == [(0, 7), (7, 12)]
    assert result.merged == 1
    assert result.p_sentences[0] == pytest.approx([0.5, 0.8])
    assert result.p_sentences[1] == pytest.approx([math.sqrt(0.27), 0.2])
    assert result.types == ["shared", "teacher"]


def test_leading_sentence_without_tokens_is_merged_into_next():
    text = "Go. Be. Do."
    teacher = TokenLogprobs([LN(0.5), LN(0.4)], [3, 7])  # nothing starts in "Go."
    student = TokenLogprobs([LN(0.5), LN(0.5), LN(0.5)], [0, 3, 7])
    result = analyze(text, teacher, student)
    assert result.spans == [(0, 7), (7, 11)] and result.merged == 1
    assert result.p_sentences[1][0] == pytest.approx(0.5)


def test_mixed_policy_scores_only_teacher_part():
    text = "Student wrote this. Teacher goes on. And ends."
    prefix = 19  # "Student wrote this."
    teacher = TokenLogprobs([LN(0.9), LN(0.6)], [19, 36])
    student = TokenLogprobs([LN(0.01), LN(0.5), LN(0.6)], [0, 19, 36])
    result = analyze(text, teacher, student, start=prefix)
    assert result.spans == [(19, 36), (36, 46)]
    assert result.p_sentences[1] == pytest.approx([0.5, 0.6])
    assert result.p_response[1] == pytest.approx(math.sqrt(0.3))  # prefix token ignored
    assert result.types == ["teacher", "shared"]


def test_distilled_adds_boosted_only_for_shared_sentences():
    text = "One. Two. Three."
    teacher = TokenLogprobs([LN(0.3), LN(0.9), LN(0.3)], [0, 4, 9])
    student = TokenLogprobs([LN(0.3), LN(0.2), LN(0.35)], [0, 4, 9])
    distilled = TokenLogprobs([LN(0.8), LN(0.95), LN(0.4)], [0, 4, 9])
    result = analyze(text, teacher, student, distilled=distilled, alpha=0.2)
    # 1: shared, p_D 0.8 - 0.3 > .2 boosted; 2: teacher stays teacher; 3: shared, 0.4-0.35 < .2
    assert result.types == ["boosted", "teacher", "shared"]
    assert result.counts == {"teacher": 1, "shared": 1, "student": 0, "boosted": 1}
    das = das_record(result, student="S", beta=0.1, distilled="D", alpha=0.2)
    assert das["distilled"] == "D" and das["counts"]["boosted"] == 1
    assert das["sentences"][0]["p_distilled"] == pytest.approx(0.8)


@pytest.mark.parametrize("block", ["sampler", "teacher"])  # teacher: files of earlier versions
def test_logprobs_mode_raw_or_accepted(block):
    def record(**teacher):
        return {"id": "r", block: {"logprobs": [-0.1], "offsets": [0], **teacher}}

    assert check_logprobs_mode(record(logprobs_mode="raw")) == "raw"
    for teacher, mode in (({"logprobs_mode": "processed"}, "processed"), ({}, "unknown"),
                          ({"logprobs_mode": None}, "unknown"), ({"logprobs_mode": "unknown"}, "unknown")):
        with pytest.raises(RecordError) as caught:
            check_logprobs_mode(record(**teacher))
        assert caught.value.reason == f"logprobs_{mode}" and f"--accept-logprobs {mode}" in caught.value.hint
        assert check_logprobs_mode(record(**teacher), accepted={mode}) == mode
    with pytest.raises(RecordError) as caught:
        check_logprobs_mode(record(logprobs_mode="raw_logits"), accepted={"processed", "unknown"})
    assert caught.value.reason == "bad_teacher_logprobs"


def test_sampler_tokens_are_read_under_either_name():
    """``sampler`` (this version) and ``teacher`` (earlier files) name the same block;
    ``sampler`` wins where a record has both."""
    block = {"logprobs": [-0.1, -0.2], "offsets": [0, 3]}
    new = teacher_tokens({"id": "a", "sampler": block}, "abc def")
    old = teacher_tokens({"id": "a", "teacher": block}, "abc def")
    assert new[0] == old[0] and new[1] == old[1] == 0
    both = {"id": "a", "sampler": block, "teacher": {"logprobs": [-9.0], "offsets": [0]}}
    assert list(teacher_tokens(both, "abc def")[0].logprobs) == [-0.1, -0.2]
    with pytest.raises(RecordError) as caught:
        teacher_tokens({"id": "a"}, "abc def")
    assert caught.value.reason == "no_teacher_logprobs" and "sampler.logprobs" in caught.value.message


def test_geometric_mean_empty_is_nan():
    assert math.isnan(geometric_mean([]))
    assert geometric_mean([LN(0.25), LN(1.0)]) == pytest.approx(0.5)


def _bpe_tokenizer(corpus: list[str], vocab_size: int, pretok: str):
    """A small trained tokenizer (no files, no hub) that reports character offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if pretok == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                            special_tokens=["[UNK]"])
    tok.train_from_iterator(corpus, trainer)
    return tok


TEXT = ("<think>\nLet me compute $3.5 \\times 2 = 7$. That is easy. Next, e.g. the sum is 12!\n"
        "1. First we add. Then we check?\n```\nx = 1. y\n```\nSo the answer is 7.\n</think>\n\n"
        "The answer is $\\boxed{7}$.")


def test_cross_tokenizer_sentence_probabilities_equal_direct_computation():
    corpus = [TEXT, "some other words. and numbers 12 34.5", "Let me think about it."] * 3
    tok_a = _bpe_tokenizer(corpus, 300, "bytelevel")
    tok_b = _bpe_tokenizer(corpus, 120, "whitespace")
    enc_a, enc_b = tok_a.encode(TEXT), tok_b.encode(TEXT)
    off_a = [s for s, _ in enc_a.offsets]
    off_b = [s for s, _ in enc_b.offsets]
    assert enc_a.tokens != enc_b.tokens  # really two different tokenizations
    rng = np.random.default_rng(0)
    lp_a = np.log(rng.uniform(0.05, 1.0, len(off_a))).tolist()
    lp_b = np.log(rng.uniform(0.05, 1.0, len(off_b))).tolist()
    result = analyze(TEXT, TokenLogprobs(lp_a, off_a), TokenLogprobs(lp_b, off_b), beta=0.1)
    assert result.merged == 0 and result.spans == sentence_spans(TEXT)
    for i, (start, end) in enumerate(result.spans):
        for lps, offs, got in ((lp_a, off_a, result.p_sentences[0][i]),
                               (lp_b, off_b, result.p_sentences[1][i])):
            mine = [lp for lp, o in zip(lps, offs) if start <= o < end]
            assert mine, f"sentence {TEXT[start:end]!r} has no token"
            assert got == pytest.approx(math.exp(sum(mine) / len(mine)), rel=1e-12)
        diff = result.p_sentences[0][i] - result.p_sentences[1][i]
        expected = "teacher" if diff > 0.1 else "student" if diff < -0.1 else "shared"
        assert result.types[i] == expected
    assert sum(result.counts.values()) == len(result.spans)
