"""dasd pack: best-fit decreasing, the packed record, tokenizing under chat templates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd_cli.core.pack import (IGNORE_INDEX, best_fit_decreasing, bin_members, packed_record, plan_sequences,
                                lower_bound)
from dasd_cli.core.sorting import stable_argsort

# --------------------------------------------------------------------------- bin packing


def check_assignment(lengths: list[int], bin_of: np.ndarray, capacity: int) -> None:
    assert len(bin_of) == len(lengths)
    loads = np.bincount(bin_of, weights=lengths) if len(lengths) else np.zeros(0)
    assert (loads <= capacity).all()
    assert (loads > 0).all()  # bins are numbered densely, none empty


def reference_bfd(lengths: list[int], capacity: int) -> int:
    """Textbook O(n * bins) best-fit decreasing: how many bins it opens."""
    free: list[int] = []
    for size in sorted(lengths, reverse=True):
        fits = [i for i, f in enumerate(free) if f >= size]
        if fits:
            best = min(fits, key=lambda i: free[i])
            free[best] -= size
        else:
            free.append(capacity - size)
    return len(free)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=200))))
def test_bfd_is_valid_and_matches_textbook_bin_count(case: tuple[int, list[int]]) -> None:
    capacity, lengths = case
    bin_of = best_fit_decreasing(lengths, capacity)
    check_assignment(lengths, bin_of, capacity)
    used = len(set(bin_of.tolist()))
    assert used == reference_bfd(lengths, capacity)
    assert used >= lower_bound(lengths, capacity)


def test_bfd_capacity_index_crosses_bitmap_words_and_levels() -> None:
    # capacity > 64*64 needs three bitmap levels; free space far from the asked size
    # forces the slow path up and down the levels.
    capacity = 70000
    lengths = [69000, 60000, 9000, 5000, 999, 1000, 4000, 1]
    bin_of = best_fit_decreasing(lengths, capacity)
    check_assignment(lengths, bin_of, capacity)
    assert len(set(bin_of.tolist())) == reference_bfd(lengths, capacity) == 3
    # best fit: 9000 goes beside 60000 (free 10000), not into a new bin
    assert bin_of[2] == bin_of[1]
    assert bin_of[6] == bin_of[3] != bin_of[1]  # 4000 only fits beside 5000
    assert {bin_of[4], bin_of[5]} == {bin_of[0], bin_of[1]}  # 999 and 1000 fill the gaps


def test_bfd_is_deterministic_and_near_lower_bound() -> None:
    rng = np.random.default_rng(7)
    capacity = 32768
    lengths = rng.lognormal(math.log(5000), 1.0, 5000).round().astype(int)
    lengths = lengths[(lengths >= 1) & (lengths <= capacity)]
    first = best_fit_decreasing(lengths, capacity)
    assert np.array_equal(first, best_fit_decreasing(lengths, capacity))
    check_assignment(lengths.tolist(), first, capacity)
    bound = lower_bound(lengths, capacity)
    assert first.max() + 1 <= math.ceil(bound * 1.01)


def test_bfd_rejects_items_over_capacity() -> None:
    with pytest.raises(ValueError, match=r"every length must be in 1\.\.10"):
        best_fit_decreasing([5, 11], 10)
    with pytest.raises(ValueError, match=r"every length must be in 1\.\.10"):
        best_fit_decreasing([0, 3], 10)
    assert len(best_fit_decreasing([], 10)) == 0


def reference_plan(lengths: list[int], capacity: int) -> list[list[int]]:
    """Textbook best-fit decreasing, item by item, with the documented tie rules.

    Longest first (ties: input order); each item goes into the open bin with the least
    free space that fits it (ties: the bin whose free space changed last), else a new
    bin; bins numbered as they open, members in input order.
    """
    free: list[int] = []
    changed: list[int] = []  # when each bin's free space last changed
    members: list[list[int]] = []
    for clock, i in enumerate(sorted(range(len(lengths)), key=lambda i: -lengths[i])):
        size = lengths[i]
        fits = [b for b, f in enumerate(free) if f >= size]
        if fits:
            b = min(fits, key=lambda b: (free[b], -changed[b]))
        else:
            b = len(free)
            free.append(capacity)
            changed.append(clock)
            members.append([])
        free[b] -= size
        changed[b] = clock
        members[b].append(i)
    return [sorted(m) for m in members]


@pytest.mark.parametrize("seed", range(60))
def test_plan_is_the_textbook_plan_with_its_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity = int(rng.choice([7, 64, 100, 4097, 70000]))
    n = int(rng.integers(0, 600))
    distinct = int(rng.integers(1, 12))  # few distinct sizes: long runs of equal items, many ties
    values = rng.integers(1, capacity + 1, distinct) if seed % 2 else np.unique(
        rng.integers(1, max(2, capacity // 3) + 1, distinct))
    lengths = rng.choice(values, n).tolist()
    members, report = plan_sequences(np.array(lengths, dtype=np.int64), capacity)
    assert [m.tolist() for m in members] == reference_plan(lengths, capacity)
    assert report.sequences == len(members) and report.samples == n


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 200).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=150))))
def test_plan_matches_textbook_plan_on_any_lengths(case: tuple[int, list[int]]) -> None:
    capacity, lengths = case
    members, _ = plan_sequences(np.array(lengths, dtype=np.int64), capacity)
    assert [m.tolist() for m in members] == reference_plan(lengths, capacity)


@pytest.mark.parametrize("high", [1, 7, 1 << 16, (1 << 16) + 3, 1 << 32, 1 << 40])
def test_stable_argsort_is_numpys_stable_argsort(high: int) -> None:
    rng = np.random.default_rng(high % 1000)
    for n in (0, 1, 5, 3000):
        keys = rng.integers(0, high, n, dtype=np.int64)
        assert np.array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))


def test_bin_members_groups_in_input_order() -> None:
    members = bin_members(np.array([1, 0, 1, 2, 0]))
    assert [m.tolist() for m in members] == [[1, 4], [0, 2], [3]]


# --------------------------------------------------------------------------- packed records


class SampleBuffer:
    """Samples in memory, packed the way `dasd pack` packs its on-disk store."""

    def __init__(self) -> None:
        self.tokens, self.prompt_lens, self.ids = [], [], []

    def add(self, sample_id: str, tokens, prompt_len: int) -> None:
        self.tokens.append(np.asarray(tokens, dtype=np.int32))
        self.prompt_lens.append(prompt_len)
        self.ids.append(sample_id)

    def packed(self, capacity: int, pack: bool = True):
        members, report = plan_sequences(np.array([len(t) for t in self.tokens]), capacity, pack)
        return ((packed_record([self.tokens[i] for i in m], [self.prompt_lens[i] for i in m],
                               [self.ids[i] for i in m]) for m in members), report)


def filled_buffer(lengths: list[int], prompt_lens: list[int]) -> SampleBuffer:
    buf = SampleBuffer()
    for i, (n, p) in enumerate(zip(lengths, prompt_lens)):
        buf.add(f"s{i}", np.arange(1000 * i, 1000 * i + n), p)
    return buf


@pytest.mark.parametrize("pack", [True, False])
def test_packed_records_hold_every_sample_exactly_once(pack: bool) -> None:
    lengths = [7, 3, 9, 2, 5, 10, 1]
    prompt_lens = [2, 1, 4, 0, 5, 3, 1]
    buf = filled_buffer(lengths, prompt_lens)
    records, report = buf.packed(10, pack=pack)
    records = list(records)
    seen = [i for r in records for i in r["ids"]]
    assert sorted(seen) == sorted(f"s{i}" for i in range(len(lengths)))
    assert report.samples == 7 and report.tokens == sum(lengths)
    assert report.sequences == len(records) == (7 if not pack else reference_bfd(lengths, 10))
    assert report.efficiency == pytest.approx(sum(lengths) / (len(records) * 10))
    for record in records:
        ids, labels, pos = (record[k].tolist() for k in ("input_ids", "labels", "position_ids"))
        assert len(ids) == len(labels) == len(pos) <= 10
        at = 0
        for sample in record["ids"]:
            i = int(sample[1:])
            n, p = lengths[i], prompt_lens[i]
            # the sample's slice is whole (never truncated) and in place
            assert ids[at:at + n] == list(range(1000 * i, 1000 * i + n))
            assert pos[at:at + n] == list(range(n))  # restarts at 0 per sample
            assert labels[at:at + p] == [IGNORE_INDEX] * p
            assert labels[at + p:at + n] == ids[at + p:at + n]
            at += n
        assert at == len(ids)


def test_no_pack_keeps_input_order() -> None:
    buf = filled_buffer([4, 9, 2], [1, 1, 1])
    records, _ = buf.packed(10, pack=False)
    assert [r["ids"] for r in records] == [["s0"], ["s1"], ["s2"]]


# --------------------------------------------------------------------------- tokenizing (real tokenizer)

# A Qwen3-style template: assistant turns in the history lose their <think> part, and a
# generation prompt opens the assistant turn. Written here; no hub access needed.
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}"
    "{%- if '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 6 times 7?"}]
RESPONSE = "<think>\nSix sevens: 42. Check: 7*6 = 42.\n</think>\n\nThe answer is 42."


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from dasd_cli.model.load import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def qwen3_style_tokenizer():
    from dasd_cli.model.load import load_tokenizer

    tokenizer = load_tokenizer(None)  # a fresh object: the end-of-turn cache is per object
    tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    return tokenizer


def labelled_text(tokenizer, record: dict) -> str:
    ids = record["input_ids"].tolist()
    labels = record["labels"].tolist()
    return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "qwen3_style"])
def test_encode_batch_matches_encode_example_and_trains_on_think(
        request, which: str) -> None:
    from dasd_cli.core.chat import encode_example, end_of_turn
    from dasd_cli.core.pack import encode_batch

    tokenizer = request.getfixturevalue(f"{which}_tokenizer")
    examples = [(MESSAGES, RESPONSE), ([{"role": "user", "content": "Hi"}], "Hello there!"),
                ([{"role": "user", "content": "Empty?"}], "")]
    batch = encode_batch(tokenizer, examples)
    for (messages, response), (ids, prompt_len) in zip(examples, batch):
        one = encode_example(tokenizer, messages, response)
        assert ids.tolist() == one.input_ids and prompt_len == one.prompt_len

    buf = SampleBuffer()
    for i, (ids, prompt_len) in enumerate(batch):
        buf.add(f"r{i}", ids, prompt_len)
    records, _ = buf.packed(4096)
    (record,) = list(records)
    eot = end_of_turn(tokenizer)
    at = 0
    for sample in record["ids"]:
        i = int(sample[1:])
        messages, response = examples[i]
        n = len(batch[i][0])
        chunk = record["input_ids"][at:at + n].tolist()
        # decoding the sample's slice gives the templated text, response whole
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(chunk) == prompt_text + response + eot
        sub = {"input_ids": record["input_ids"][at:at + n], "labels": record["labels"][at:at + n]}
        # labels cover exactly the response and its end of turn
        assert labelled_text(tokenizer, sub) == response + eot
        at += n
    if which == "qwen3_style":
        # the template strips <think> from history, yet the training target keeps it
        history = tokenizer.apply_chat_template(
            MESSAGES + [{"role": "assistant", "content": RESPONSE}], tokenize=False)
        assert "Six sevens" not in history
        assert "<think>\nSix sevens: 42." in labelled_text(tokenizer, {
            "input_ids": record["input_ids"], "labels": record["labels"]})


# --------------------------------------------------------------------------- the command


def response(i: int, words: int) -> dict:
    return {"id": f"r{i}", "prompt_id": f"q{i}",
            "messages": [{"role": "user", "content": f"Count to {words}."}],
            "response": "<think>\n" + " ".join(str(k) for k in range(words)) + "\n</think>\n\nDone."}


@pytest.mark.slow
def test_cli_packs_drops_over_cutoff_and_writes_the_packed_record(cli, tmp_path: Path,
                                                                  smollm2_tokenizer) -> None:
    import orjson

    from helpers import parse_records, to_jsonl

    records = [response(i, w) for i, w in enumerate([5, 40, 3, 400, 20, 8, 60, 1])]
    stats = tmp_path / "stats.json"
    code, out, err = cli(["pack", "--cutoff-len", "300", "--stats", str(stats), "--compress", "none", "-"],
                         stdin=to_jsonl(records))
    assert code == 0, err
    packed = parse_records(out)
    assert all(set(p) == {"input_ids", "labels", "position_ids", "ids", "tokenizer"} for p in packed)
    from dasd_cli.core.chat import tokenizer_fingerprint

    assert {p["tokenizer"] for p in packed} == {tokenizer_fingerprint(smollm2_tokenizer)}
    ids = [i for p in packed for i in p["ids"]]
    assert sorted(ids) == sorted(f"r{i}" for i in range(8) if i != 3)  # each once; r3 too long
    data = orjson.loads(stats.read_bytes())
    assert data["dropped_by_reason"] == {"over_cutoff": 1} and data["kept"] == 7
    assert data["sequences"] == len(packed) < 7
    tokens = sum(len(p["input_ids"]) for p in packed)
    assert data["tokens"] == tokens
    assert data["packing_efficiency"] == round(tokens / (len(packed) * 300), 4)
    assert "read 8, packed 7, dropped 1 (over_cutoff 1)" in err
    # each slice decodes to the templated text; labels are the response + end of turn
    from dasd_cli.core.chat import end_of_turn

    by_id = {r["id"]: r for r in records}
    eot = end_of_turn(smollm2_tokenizer)
    for p in packed:
        starts = [k for k, pos in enumerate(p["position_ids"]) if pos == 0] + [len(p["input_ids"])]
        assert len(starts) - 1 == len(p["ids"]) and len(p["input_ids"]) <= 300
        for sample, a, b in zip(p["ids"], starts, starts[1:]):
            r = by_id[sample]
            prompt = smollm2_tokenizer.apply_chat_template(r["messages"], tokenize=False,
                                                           add_generation_prompt=True)
            assert smollm2_tokenizer.decode(p["input_ids"][a:b]) == prompt + r["response"] + eot
            target = [t for t, lab in zip(p["input_ids"][a:b], p["labels"][a:b]) if lab != -100]
            assert smollm2_tokenizer.decode(target) == r["response"] + eot
    # --no-pack: one sample per sequence, input order
    code, out, err = cli(["pack", "--cutoff-len", "300", "--no-pack", "--compress", "none", "-"],
                         stdin=to_jsonl(records))
    assert code == 0, err
    assert [p["ids"] for p in parse_records(out)] == [[f"r{i}"] for i in range(8) if i != 3]


@pytest.mark.slow
def test_cli_record_without_response_names_file_and_line(cli, tmp_path: Path) -> None:
    from helpers import to_jsonl

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(to_jsonl([response(0, 3), {"id": "x", "prompt": "no response here"}]))
    code, _out, err = cli(["pack", str(path)])
    assert code == 1 and "no 'response'" in err and f"({path}:2)" in err


@pytest.mark.slow
def test_pipe_mix_das_into_pack(tmp_path: Path) -> None:
    """`dasd mix --select das | dasd pack` as real processes: the DAS winners get packed."""
    import subprocess

    from helpers import dasd_bin, parse_records, write_file

    records = []
    for q in range(4):
        for s in range(3):
            r = response(q * 10 + s, 5 + s)
            r["prompt_id"] = f"q{q}"
            r["messages"][0]["content"] += f" (question {q})"  # distinct content: no dedupe
            r["das"] = {"score": (q + s) % 3, "p_teacher": 0.5, "p_student": 0.4}
            records.append(r)
    scored = write_file(tmp_path / "scored.jsonl.zst", records, "zstd")
    dasd = " ".join(dasd_bin())
    script = (f"{dasd} mix --select das --seed 1 {scored} "
              f"| {dasd} pack --cutoff-len 1024 --compress none")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    ids = sorted(i for p in parse_records(proc.stdout) for i in p["ids"])
    winners = sorted(f"r{q * 10 + s}" for q in range(4) for s in range(3) if (q + s) % 3 == 2)
    assert ids == winners
    assert b"dasd mix: read 12, kept 4" in proc.stderr and b"dasd pack: read 4, packed 4" in proc.stderr


@pytest.mark.slow
def test_filter_and_pack_build_the_prompt_sample_sent(cli, smollm2_tokenizer) -> None:
    """`dasd sample --system-prompt X`, then filter and pack without the flag: the token
    count and the packed prompt tokens hold X."""
    from helpers import parse_records, to_jsonl
    from dasd_cli.core.chat import count_training_tokens
    from fault_proxy import FakeOpenAI

    system = "Answer like a pirate."
    with FakeOpenAI() as server:
        code, sampled, err = cli(["sample", "--backend", "openai", "--base-url", server.url, "--compress",
                                  "none", "--system-prompt", system, "-"],
                                 stdin=to_jsonl([{"id": "q", "prompt": "What is 6 times 7?"}]))
        assert code == 0, err
        teacher_saw = server.payloads[0]["messages"]
    record = parse_records(sampled)[0]
    assert teacher_saw[0] == {"role": "system", "content": system}
    tokens = count_training_tokens(smollm2_tokenizer, teacher_saw, record["response"])
    for limit, kept in ((tokens, 1), (tokens - 1, 0)):  # counted with the system turn
        code, out, err = cli(["filter", "--max-tokens", str(limit), "--compress", "none", "-"], stdin=sampled)
        assert code == 0, err
        assert len(parse_records(out)) == kept, (limit, err)
    code, out, err = cli(["pack", "--cutoff-len", "300", "--no-pack", "--compress", "none", "-"], stdin=sampled)
    assert code == 0, err
    packed = parse_records(out)[0]
    prompt_ids = [t for t, label in zip(packed["input_ids"], packed["labels"]) if label == IGNORE_INDEX]
    assert prompt_ids == smollm2_tokenizer.encode(
        smollm2_tokenizer.apply_chat_template(teacher_saw, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)
    assert system in smollm2_tokenizer.decode(prompt_ids)
