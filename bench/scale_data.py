"""Synthetic `dasd score` output at scale, for bench/bench_scale.py (no model, no download).

Each record is shaped like what `dasd score` writes: a prompt (system + user turn), a long
``<think>`` response, the teacher's per-token log-probs and character offsets, and a
``das`` object. Four candidates per prompt, so ``dasd mix --select das --per-prompt 1``
keeps a quarter of them.

A "token" here is a word piece of about four characters (" sum", " check", ...): the
response is the concatenation of its pieces, ``sampler.offsets[k]`` is where piece k
starts and ``sampler.logprobs`` has one value per piece. The pieces are common English
words, so the real SmolLM2 tokenizer of `dasd pack` sees about one token per piece too.
The input size of a file is ``sum(len(sampler.logprobs))``.

Generation is vectorised with numpy (pieces picked by index, offsets by cumulative sum,
arrays serialised directly by orjson), so 20M tokens take seconds, not minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import zstandard

CANDIDATES = 4  # responses per prompt
MEDIAN_TOKENS = 4000  # tokens, median response length (log-normal)
SIGMA = 0.5  # log-normal shape of the response length
MIN_TOKENS = 200  # tokens, shortest response
MAX_TOKENS = 16000  # tokens, longest response (well under pack's --cutoff-len 32768)
ZSTD_LEVEL = 1  # compression level of the written files (fast: generation time matters more)
DOMAINS = ("math", "code", "science", "instruction")
SYSTEM = "You are a helpful assistant."

WORDS = ("the", "sum", "of", "two", "and", "we", "check", "this", "so", "then", "add", "it",
         "is", "not", "term", "value", "next", "step", "case", "root", "side", "area", "line",
         "point", "set", "one", "three", "four", "five", "more", "less", "than", "that",
         "each", "both", "from", "into", "over", "with", "wait", "let", "me", "see", "now",
         "again", "all", "as", "by", "for", "if", "in", "on", "or", "to", "be", "can", "has",
         "gives", "get", "make", "same", "other", "first", "last", "must", "only", "also",
         "equal", "count", "find", "sign", "half", "zero", "even", "odd", "prime", "factor",
         "times", "minus", "plus", "order", "rule", "form", "part", "way", "yes", "no", "true")
# A piece is a word with its leading space; a newline now and then makes paragraphs.
PIECES = np.array([" " + w for w in WORDS] + ["\n\n", ".", ","], dtype=object)
PIECE_LENGTHS = np.array([len(p) for p in PIECES], dtype=np.int64)
PIECE_WEIGHTS = np.array([1.0] * len(WORDS) + [0.02 * len(WORDS), 0.06 * len(WORDS),
                                                0.04 * len(WORDS)])
PIECE_CUMULATIVE = np.cumsum(PIECE_WEIGHTS / PIECE_WEIGHTS.sum())  # for inverse-CDF picks
HEAD = ["<think>\n"]  # the response's first piece
TAIL = ["\n</think>\n\n", "The", " answer", " is", " 42", "."]  # and its last ones
HEAD_LENGTHS = np.array([len(p) for p in HEAD], dtype=np.int64)
TAIL_LENGTHS = np.array([len(p) for p in TAIL], dtype=np.int64)


@dataclass(frozen=True)
class Written:
    """What :func:`write_scored` wrote."""

    path: Path
    tokens: int  # sum of len(sampler.logprobs)
    records: int
    prompts: int
    compressed_bytes: int


def response_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """n response lengths in tokens: log-normal around MEDIAN_TOKENS, clipped to the bounds."""
    draw = rng.lognormal(math.log(MEDIAN_TOKENS), SIGMA, n)
    return np.clip(np.round(draw), MIN_TOKENS, MAX_TOKENS).astype(np.int64)


def make_record(rng: np.random.Generator, prompt: int, candidate: int, tokens: int) -> bytes:
    """One scored record of ``tokens`` tokens, as a JSON line."""
    body = tokens - len(HEAD) - len(TAIL)
    picks = np.searchsorted(PIECE_CUMULATIVE, rng.random(body) * PIECE_CUMULATIVE[-1], side="right")
    response = "".join(HEAD) + "".join(PIECES[picks].tolist()) + "".join(TAIL)
    lengths = np.concatenate([HEAD_LENGTHS, PIECE_LENGTHS[picks], TAIL_LENGTHS])
    offsets = np.zeros(tokens, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    logprobs = np.round(-np.abs(rng.standard_normal(tokens)), 6)
    counts = rng.integers(0, 40, size=3)
    p_teacher, p_student = np.round(rng.random(2), 6)
    a, b = (int(x) for x in rng.integers(10, 1000, size=2))
    record = {
        "id": f"p{prompt}@1.0#{candidate}",
        "prompt_id": f"p{prompt}",
        "domain": DOMAINS[prompt % len(DOMAINS)],
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": f"Question {prompt}: what is {a} plus {b}?"}],
        "response": response,
        "finish_reason": "stop",
        "sampler": {"model": "synthetic", "temperature": 1.0, "top_p": 1.0, "seed": 0,
                    "logprobs": logprobs, "offsets": offsets, "logprobs_mode": "raw"},
        "das": {"student": "synthetic", "beta": 0.1,
                "counts": {"teacher": int(counts[0]), "shared": int(counts[1]),
                           "student": int(counts[2])},
                "score": int(counts[0]), "p_teacher": float(p_teacher),
                "p_student": float(p_student), "sentences": []},
    }
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def write_scored(path: Path, target_tokens: int, seed: int = 0) -> Written:
    """Write whole prompts (CANDIDATES records each) until ``target_tokens`` is reached.

    Deterministic for a given ``seed``; the file is zstd-compressed JSONL.
    """
    rng = np.random.default_rng(seed)
    tokens = records = prompts = 0
    with open(path, "wb") as raw:
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False) as out:
            while tokens < target_tokens:
                for candidate, length in enumerate(response_lengths(rng, CANDIDATES).tolist()):
                    out.write(make_record(rng, prompts, candidate, length))
                    tokens += length
                    records += 1
                prompts += 1
    return Written(path=path, tokens=tokens, records=records, prompts=prompts,
                   compressed_bytes=path.stat().st_size)


def write_packed(path: Path, target_tokens: int, seq_len: int, vocab: int,
                 tokenizer: str | None, seed: int = 0) -> int:
    """Packed records (`dasd pack` output) of ``seq_len`` tokens each, four samples per
    sequence, random ids below ``vocab``, until ``target_tokens``; returns the tokens.

    Every sequence has the same length, so one training step costs the same at every
    size and a training run's memory differences come from its data handling.
    """
    rng = np.random.default_rng(seed)
    quarter = seq_len // 4
    positions = np.tile(np.arange(quarter, dtype=np.int64), 4)
    tokens = sequences = 0
    with open(path, "wb") as raw:
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False) as out:
            while tokens < target_tokens:
                ids = rng.integers(2, vocab, size=4 * quarter)
                labels = ids.copy()
                for k in range(4):  # a 16-token prompt at the start of each sample
                    labels[k * quarter:k * quarter + 16] = -100
                record = {"input_ids": ids, "labels": labels, "position_ids": positions,
                          "ids": [f"s{sequences}-{k}" for k in range(4)]}
                if tokenizer is not None:
                    record["tokenizer"] = tokenizer
                out.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY
                                       | orjson.OPT_APPEND_NEWLINE))
                tokens += 4 * quarter
                sequences += 1
    return tokens


def read_lines(path: Path):
    """The lines of a zstd-compressed (or plain) JSONL file, streamed, without newlines."""
    import io

    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic == b"\x28\xb5\x2f\xfd":
            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), 1 << 20)
        else:
            stream = raw
        for line in stream:
            line = line.rstrip(b"\n")
            if line:
                yield line


if __name__ == "__main__":  # a quick look: python bench/scale_data.py OUT.jsonl.zst TOKENS
    import sys
    import time

    start = time.perf_counter()
    info = write_scored(Path(sys.argv[1]), int(float(sys.argv[2])))
    print(f"{info} in {time.perf_counter() - start:.1f} s")
