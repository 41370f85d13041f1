"""examples/on-policy.mk on a tiny student/teacher pair: rounds, shards, the per-round
held-out KL, teacher tokens, and a stopped round resumed to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, char_model, decode, parse_records

pytestmark = pytest.mark.slow


def _make(work: Path, pair: dict[str, Path], *extra: str, target: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    fp32 = "--dtype fp32"
    args = ["make", "--no-print-directory", "-f", "examples/on-policy.mk", f"BIN={bin_dir}",
            f"STUDENT={pair['student']}", f"TEACHER={pair['teacher']}", f"PROMPTS={pair['prompts']}",
            f"HELDOUT={pair['heldout']}", f"WORK={work}", "ROUNDS=1", "STEPS=2", "SHARDS=2", "MAX_TOKENS=16",
            "LR=3e-3", f"SAMPLER={bin_dir}/dasd sample {fp32}", f"SCORER={bin_dir}/dasd score {fp32}",
            f"TRAIN_FLAGS={fp32}", *extra] + ([target] if target else [])
    result = subprocess.run(args, cwd=ROOT, capture_output=True, env=os.environ.copy(), timeout=1800)
    if check:
        assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loop")
    prompts, heldout = root / "train.jsonl", root / "heldout.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"question {i}?"}) + "\n" for i in range(6)))
    heldout.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"held {i}?"}) + "\n" for i in range(3)))
    return {"student": char_model(root / "student", seed=0), "teacher": char_model(root / "teacher", seed=1),
            "prompts": prompts, "heldout": heldout, "root": root}


@pytest.fixture(scope="module")
def full_run(pair) -> Path:
    work = pair["root"] / "work"
    _make(work, pair)
    return work


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_round_lowers_the_heldout_reverse_kl_and_counts_teacher_tokens(full_run):
    summary = json.loads((full_run / "summary.json").read_text())
    kl = [row["heldout"]["reverse_kl"] for row in summary["per_round"]]
    assert [row["round"] for row in summary["per_round"]] == [0, 1]
    assert kl[1] < kl[0], kl
    for k in (1,):
        round_ = json.loads((full_run / f"round-{k}" / "round.json").read_text())
        samples = [r for j in (0, 1) for r in parse_records((full_run / f"round-{k}" / f"samples.shard-{j}.jsonl").read_bytes())]
        assert round_["teacher_tokens"] == sum(len(r["sampler"]["logprobs"]) for r in samples)
        assert round_["samples"] == len(samples) == 12 and round_["steps"] == 2
        steps = [round_["first_step"], round_["last_step"]]  # two steps, each on half the samples
        mean_advantage = sum(m["advantage"] * m["target_tokens"] for m in steps) / sum(m["target_tokens"] for m in steps)
        assert mean_advantage == pytest.approx(-round_["sampled_reverse_kl"], abs=1e-5)
        model = f"round-{k - 1}/model" if k > 1 else "student"
        assert all(r["sampler"]["model"] == Path(model).name for r in samples)
        heldout = json.loads((full_run / f"round-{k}" / "heldout-kl.json").read_text())
        assert heldout["round"] == k and heldout["misaligned"] == 0 and heldout["kl_tokens"] > 0
    assert summary["teacher_tokens"]["training"] == sum(
        json.loads((full_run / f"round-{k}" / "round.json").read_text())["teacher_tokens"] for k in (1,))


def test_shards_split_the_prompts(full_run):
    ids = [{r["prompt_id"] for r in parse_records((full_run / "round-1" / f"samples.shard-{j}.jsonl").read_bytes())}
           for j in (0, 1)]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == {f"t{i}" for i in range(6)}
    scored = parse_records(decode((full_run / "round-1" / "scored.shard-1.jsonl.zst").read_bytes()))
    assert {r["prompt_id"] for r in scored} == ids[1] and all("teacher_scores" in r for r in scored)


def test_a_round_stopped_after_its_first_checkpoint_resumes_to_the_same_weights(pair, full_run):
    """The first run stops right after round 1's first optimizer step and checkpoint (as a
    killed run leaves it); the rerun resumes that round from the checkpoint. The round's
    samples and scores are the full run's, copied with their times (make takes them as done)."""
    work = pair["root"] / "stopped"
    (work / "round-1").mkdir(parents=True)
    for item in (full_run / "round-1").iterdir():
        if item.is_file() and not item.name.endswith(("metrics.jsonl", "round.json")) and "heldout" not in item.name:
            shutil.copy2(item, work / "round-1" / item.name)
    shutil.copytree(full_run / "round-1" / "stats", work / "round-1" / "stats", copy_function=shutil.copy2)
    target = str(work / "round-1" / "round.json")
    bin_dir = Path(sys.executable).parent
    first = _make(work, pair, f"TRAIN={bin_dir}/dasd train --stop-after 1", target=target)
    assert "dasd sample" not in first.stdout.decode() and "dasd score" not in first.stdout.decode()
    assert (work / "round-1" / "model" / "checkpoint-1").is_dir()
    assert not (work / "round-1" / "model" / "config.json").exists()
    second = _make(work, pair, target=target)
    assert "--resume" in second.stdout.decode() and "dasd sample" not in second.stdout.decode()
    a, b = _weights(full_run / "round-1" / "model"), _weights(work / "round-1" / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    steps = [json.loads(line)["step"] for line in (work / "round-1" / "train.metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and first.returncode == 0
