"""Helpers the test files share: run dasd (in-process or as a subprocess), write and read
JSONL streams, and build the records, requests and tiny models several test files use.

A test file imports what it shares from here (or from the support modules moe_models.py
and fault_proxy.py), never from another test file; tests/test_layers.py checks that. The
fixtures are in conftest.py. torch, transformers and dasd's model code are imported
inside the builders that need them: the stream tests import this module too.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import random
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import zstandard

from dasd_cli.backends.base import ScoreRequest
from dasd_cli.core.segment import sentence_spans

# ---------------------------------------------------------------- dasd and its streams
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port no process holds now (for a server or a torchrun rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dasd_bin() -> list[str]:
    """The dasd console script next to this interpreter, or `python -m dasd_cli.cli`."""
    script = Path(sys.executable).with_name("dasd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dasd_cli.cli"]


def to_jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)


def decode(data: bytes) -> bytes:
    """Decompress output bytes by their magic (all zstd frames)."""
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    return data


def parse_records(data: bytes) -> list[dict[str, Any]]:
    """Every line must be a JSON object: this is how tests check 'valid JSONL'."""
    text = decode(data)
    assert text == b"" or text.endswith(b"\n"), "output does not end with a newline"
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def write_file(path: Path, records: list[dict[str, Any]], kind: str = "plain") -> Path:
    data = to_jsonl(records)
    if kind == "zstd":
        data = zstd_bytes(data)
    elif kind == "gzip":
        data = gzip_bytes(data)
    path.write_bytes(data)
    return path


def run_dasd(args: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run dasd as a subprocess (the real CLI, real streams)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(dasd_bin() + args, input=stdin if stdin is not None else b"",
                          capture_output=True, env=full_env, timeout=timeout)


# ---------------------------------------------------------------- records and requests
def scored_record(i: int) -> dict:
    """A response record already scored by the default student (score reuses its das)."""
    response = f"Step one for {i}. Then step two.\nThe answer is {i}."
    (a, b), (_, c), (_, d) = sentence_spans(response)
    return {"id": f"p{i}@0.6#0", "prompt_id": f"p{i}", "prompt": f"Question {i}?", "response": response,
            "finish_reason": "stop", "sampler": {"model": "T", "temperature": 0.6, "top_p": 1.0, "seed": 0,
                                                 "logprobs": [-0.1, -0.2], "offsets": [0, 17],
                                                 "logprobs_mode": "raw"},
            "das": {"student": "SmolLM2-135M-Instruct", "beta": 0.1,
                    "counts": {"teacher": 1, "shared": 1, "student": 1}, "score": 1,
                    "p_teacher": 0.86, "p_student": 0.5,
                    "sentences": [{"start": a, "end": b, "p_teacher": 0.9, "p_student": 0.5, "type": "teacher"},
                                  {"start": b, "end": c, "p_teacher": 0.8, "p_student": 0.75, "type": "shared"},
                                  {"start": c, "end": d, "p_teacher": 0.2, "p_student": 0.6,
                                   "type": "student"}]}}


@functools.cache
def default_model_key() -> str:
    """The content key of the embedded default model (what reuse of scores is decided on)."""
    from dasd_cli.model.load import model_key

    return model_key(None)


def teacher_scored_record(i: int) -> dict:
    """A student sample (temperature 1) already scored by the default model as its teacher:
    `dasd score --role teacher` passes it through and counts its tokens, without a model."""
    response = f"The answer is {i}."
    offsets = [0, 4, 11, 14]
    return {"id": f"p{i}@1.0#0", "prompt_id": f"p{i}", "prompt": f"Question {i}?", "response": response,
            "finish_reason": "stop",
            "sampler": {"model": "S", "temperature": 1.0, "top_p": 1.0, "seed": 0,
                        "logprobs": [-0.5, -0.4, -0.3, -0.2], "offsets": offsets, "logprobs_mode": "raw"},
            "teacher_scores": {"model": "SmolLM2-135M-Instruct", "model_key": default_model_key(),
                               "logprobs": [-0.25, -0.5, -0.25, -0.5], "offsets": offsets, "aligned": True}}


# Prompts a teacher samples in the backend tests (one of them not ASCII).
SAMPLE_PROMPTS = [{"id": "a", "prompt": "What is 2+2?"}, {"id": "b", "prompt": "Name a color."},
                  {"id": "c", "prompt": "¿Cuál es la capital de Francia?"}]


def contract(records: list[dict[str, Any]]) -> int:
    """Offsets non-decreasing, one per log-prob; returns how many re-tokenize exactly."""
    from dasd_cli.core.chat import tokenize_with_offsets
    from dasd_cli.model.load import load_tokenizer

    tokenizer = load_tokenizer(None)
    canonical = 0
    for record in records:
        offsets, logprobs = record["sampler"]["offsets"], record["sampler"]["logprobs"]
        assert len(offsets) == len(logprobs) > 0 and record["sampler"]["logprobs_mode"] == "raw"
        assert all(a <= b for a, b in zip(offsets, offsets[1:])) and offsets[-1] < len(record["response"])
        canonical += tokenize_with_offsets(tokenizer, record["response"])[1] == offsets
    return canonical


def teacher_forced_gap(records: list[dict[str, Any]]) -> float:
    """Largest |stored - log_softmax(raw logits)| over every token, with transformers fp32."""
    import torch

    from dasd_cli.backends.hf import HFBackend
    from dasd_cli.core.chat import encode_ids, prompt_messages, render_prompt

    engine = HFBackend(dtype="fp32")
    worst = 0.0
    for record in records:
        prompt_ids = encode_ids(engine.tokenizer, render_prompt(engine.tokenizer, prompt_messages(record)))
        response_ids = encode_ids(engine.tokenizer, record["response"])
        if len(response_ids) != len(record["sampler"]["logprobs"]):
            continue  # not the canonical tokenization: the sampled ids are not recoverable
        with torch.inference_mode():  # on the model's device (a GPU where there is one)
            ids = torch.tensor([prompt_ids + response_ids], device=engine.model.device)
            logits = engine.model(ids).logits[0].float().cpu()
        forced = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1).gather(
            1, torch.tensor(response_ids)[:, None])[:, 0]
        worst = max(worst, (forced - torch.tensor(record["sampler"]["logprobs"])).abs().max().item())
    return worst


# Score requests with a think block, a system turn, several sentences, and an empty response.
REQUESTS = [
    ScoreRequest("a", [{"role": "user", "content": "What is 2+3?"}],
                 "<think>\nAdd them. 2 + 3 = 5.\n</think>\n\nThe answer is $5$."),
    ScoreRequest("b", [{"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": "Name a prime."}], "7 is prime."),
    ScoreRequest("c", [{"role": "user", "content": "Count to five, with a note on each number."}],
                 "One is first. Two is even. Three is odd! Four is a square. Five, done."),
    ScoreRequest("empty", [{"role": "user", "content": "Say nothing."}], ""),
]


def reference_logprobs(model, tokenizer, request) -> tuple[list[float], list[int]]:
    """A request's response log-probs and offsets by one plain forward pass of ``model``."""
    import torch

    from dasd_cli.core.chat import encode_example

    enc = encode_example(tokenizer, request.messages, request.response, add_end_of_turn=False)
    ids = torch.tensor([enc.input_ids])
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    targets = ids[0, enc.prompt_len:]
    rows = logprobs[enc.prompt_len - 1:len(enc.input_ids) - 1]
    return rows.gather(1, targets[:, None]).squeeze(1).tolist(), enc.response_offsets


# ---------------------------------------------------------------- training data, tiny models
def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with a word-level tokenizer, saved as a transformers folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(97)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", eos_token="t1").save_pretrained(folder)
    return folder


def make_samples(n: int, seed: int = 0, vocab: int = 97) -> list[tuple[list[int], int]]:
    """(tokens, prompt length) pairs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(5, 14)
        out.append(([rng.randint(2, vocab - 1) for _ in range(length)], rng.randint(1, 3)))
    return out


def pack(samples: list[tuple[list[int], int]], prefix: str = "s") -> dict:
    """One packed record (DESIGN.md "Packed sequence") holding ``samples`` back to back."""
    record = {"input_ids": [], "labels": [], "position_ids": [], "ids": []}
    for i, (tokens, prompt_len) in enumerate(samples):
        record["input_ids"] += tokens
        record["labels"] += [-100] * prompt_len + tokens[prompt_len:]
        record["position_ids"] += list(range(len(tokens)))
        record["ids"].append(f"{prefix}{i}")
    return record


def packed_records(samples, per_record: int) -> list[dict]:
    return [pack(samples[i:i + per_record], prefix=f"r{i}-") for i in range(0, len(samples), per_record)]


def routed_records(n: int, seed: int, token_groups=None, per_record: int = 2) -> list[dict]:
    """Packed records of ``per_record`` samples each; ``token_groups[i % 2]`` lists the token residues
    (mod 4) record ``i`` draws from (None: any token), so a router can send them apart."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        samples = []
        for _ in range(per_record):
            pool = [t for t in range(2, 97) if token_groups is None or t % 4 in token_groups[i % 2]]
            tokens = [rng.choice(pool) for _ in range(rng.randint(5, 10))]
            samples.append((tokens, rng.randint(1, 3)))
        records.append(pack(samples, prefix=f"r{i}-"))
    return records


def make_trainer(model: Path, out: Path, records: list[dict], **kwargs):
    """A recipe.Trainer (fp32, one process) set up on ``model`` with ``records`` as its data."""
    from dasd_cli.core.train.batching import packed_from_record
    from dasd_cli.training import recipe
    from dasd_cli.training.distributed import Ranks

    config = recipe.TrainConfig(out=out, model=str(model), dtype="fp32", **kwargs)
    trainer = recipe.Trainer(config, Ranks())
    trainer.setup_model()
    trainer.setup_data([packed_from_record(r, trainer.vocab_size) for r in records])
    return trainer


# ---------------------------------------------------------------- on-policy distillation
# A char-level tokenizer: byte-level BPE without merges, one printable ASCII character per
# token, so every token sequence a model samples is its own canonical tokenization
# (re-tokenizing a sample gives the sampled tokens back, as for most samples of a real
# model); a chat template with special tokens frames the turns, and the end-of-turn
# token is the end-of-sequence token.


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


def smollm2_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with the embedded default's tokenizer (byte-level BPE with
    merges): its samples are often not the tokenizer's own tokenization of their text."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dasd_cli.model.load import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(None)))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sample_logprobs(model_folder: Path, tokens: list[int]) -> list[float]:
    """log pi(token_i | tokens_<i) under the model at ``model_folder`` (0.0 at i = 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_folder), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
    picked = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(tokens[1:])[:, None]).squeeze(1)
    return [0.0] + picked.tolist()


def on_policy(record: dict, model_folder: Path, teacher_shift: float | None = None, seed: int = 0) -> dict:
    """``record`` (from ``pack``) with the log-prob streams of on-policy data: the sampler is the
    model itself; the teacher's log-probs are the sampler's plus noise (or plus a constant)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sampler, teacher = [], []
    starts = [i for i, p in enumerate(record["position_ids"]) if p == 0] + [len(record["input_ids"])]
    for a, b in zip(starts[:-1], starts[1:]):
        own = sample_logprobs(model_folder, record["input_ids"][a:b])
        for i, lp in enumerate(own):
            target = record["labels"][a + i] != -100
            sampler.append(lp if target else 0.0)
            if not target:
                teacher.append(0.0)
            elif teacher_shift is not None:
                teacher.append(lp + teacher_shift)
            else:
                teacher.append(lp + float(torch.randn(1, generator=gen, dtype=torch.float64)))
    return {**record, "sampler_logprobs": sampler, "teacher_logprobs": teacher}


def tiny_llama(attn: str, seed: int = 0):
    """A random 2-layer Llama (the same shape as :func:`make_tiny_model`'s), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


# ---------------------------------------------------------------- the repetition filter
@functools.cache
def repetition_configs() -> dict[str, Any]:
    """The default RepetitionConfig and a strict one, which makes every statistic and the
    looping-tail search decide more often (imported on use: the filter loads numba)."""
    from dasd_cli.core.filters.repetition import RepetitionConfig

    strict = replace(RepetitionConfig(), min_words=5, loop_min_repeats=2.5, loop_min_words=6, loop_min_bytes=16,
                     max_duplicate_line_fraction=0.9, max_duplicate_line_char_fraction=0.9,
                     max_duplicate_paragraph_fraction=0.9, max_duplicate_paragraph_char_fraction=0.9,
                     max_top_2gram_fraction=0.05, max_top_3gram_fraction=0.04, max_top_4gram_fraction=0.03,
                     max_duplicate_5gram_fraction=0.2, max_duplicate_6gram_fraction=0.15,
                     max_duplicate_7gram_fraction=0.1, max_duplicate_8gram_fraction=0.08,
                     max_duplicate_9gram_fraction=0.06, max_duplicate_10gram_fraction=0.05)
    return {"default": RepetitionConfig(), "strict": strict}
