"""The method's own effects in a `make reproduce` run: DAS's mechanism on the training
pools, the power of the DAS-vs-random comparison, and mixed-policy where it has work.

Used by examples/report.py; every interval is dasd eval's paired bootstrap over questions
(dasd_cli.core.evaluate), seeded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

Records = Callable[[Path], list[dict[str, Any]]]
Interval = tuple[float, float, float]


def _bootstrap(values: list[float], seed: int) -> Interval | None:
    from dasd_cli.core.evaluate import paired_bootstrap

    return paired_bootstrap(values, seed=seed) if values else None


def pool_mechanism(pool: list[dict[str, Any]], picks: dict[str, list[dict[str, Any]]],
                   seed: int) -> dict[str, Any]:
    """DAS's mechanism on one training pool (every filtered, scored and `dasd eval`-checked
    teacher response), paired by question.

    - ``pick``: for each selection (``das``, ``random``), the correctness rate of the
      response it kept, and that rate minus the expected correctness of a uniformly random
      pick from the same pool (the pool's share of correct responses), with its interval;
    - ``count_gap``: over the questions whose pool holds both correct and wrong responses,
      the mean Teacher-sentence count of the correct ones minus that of the wrong ones.
    """
    by_question: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    correct_of: dict[str, bool] = {}
    for record in pool:
        if "eval" not in record:
            continue
        correct = bool(record["eval"]["correct"])
        by_question[record["prompt_id"]].append((correct, int(record["das"]["counts"]["teacher"])))
        correct_of[record["id"]] = correct
    expected = {q: sum(c for c, _ in rows) / len(rows) for q, rows in by_question.items()}
    out: dict[str, Any] = {"questions": len(by_question),
                           "responses": sum(len(rows) for rows in by_question.values()),
                           "expected_random": _bootstrap(list(expected.values()), seed),
                           "pick": {}}
    for name, kept in picks.items():
        chosen = {r["prompt_id"]: correct_of[r["id"]] for r in kept if r["id"] in correct_of}
        questions = sorted(chosen.keys() & expected.keys())
        out["pick"][name] = {
            "questions": len(questions),
            "correct": _bootstrap([float(chosen[q]) for q in questions], seed),
            "minus_expected_random": _bootstrap([chosen[q] - expected[q] for q in questions], seed)}
    gaps = []
    for rows in by_question.values():
        right = [n for c, n in rows if c]
        wrong = [n for c, n in rows if not c]
        if right and wrong:
            gaps.append(sum(right) / len(right) - sum(wrong) / len(wrong))
    out["count_gap"] = {"questions": len(gaps), "difference": _bootstrap(gaps, seed)}
    mean_counts = [n for rows in by_question.values() for _, n in rows]
    out["mean_teacher_sentences"] = sum(mean_counts) / len(mean_counts) if mean_counts else None
    return out


def mechanism(run: Path, read: Records, seed: int) -> dict[str, dict[str, Any]]:
    """:func:`pool_mechanism` for each sampling temperature of the run."""
    found = {}
    for path in sorted(run.glob("pool.t*.jsonl.zst")):
        temperature = path.name.removeprefix("pool.t").removesuffix(".jsonl.zst")
        picks = {name: read(run / "data" / f"{name}.t{temperature}.jsonl.zst")
                 for name in ("das", "random") if (run / "data" / f"{name}.t{temperature}.jsonl.zst").is_file()}
        found[temperature] = pool_mechanism(read(path), picks, seed)
    return found


def mechanism_lines(found: dict[str, dict[str, Any]], ci: Callable[..., str]) -> list[str]:
    """The mechanism table (markdown rows)."""
    header = ("| pool | questions | responses | mean Teacher sentences | correct: random pick (expected) "
              "| correct: DAS pick | DAS minus expected random | correct: random arm's pick "
              "| Teacher sentences, correct minus wrong (questions) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for temperature, m in found.items():
        das, random = m["pick"].get("das", {}), m["pick"].get("random", {})
        gap = m["count_gap"]
        mean = m["mean_teacher_sentences"]
        lines.append(
            f"| T={temperature} | {m['questions']} | {m['responses']} | "
            f"{'n/a' if mean is None else f'{mean:.2f}'} | {ci(m['expected_random'])} | "
            f"{ci(das.get('correct'))} | {ci(das.get('minus_expected_random'), signed=True)} | "
            f"{ci(random.get('correct'))} | {number_ci(gap['difference'])} ({gap['questions']}) |")
    return lines


def number_ci(result: Interval | None) -> str:
    """"+0.41 [+0.12, +0.70]" (a count difference, 95% CI) or n/a."""
    if result is None:
        return "n/a"
    mean, low, high = result
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def paired(here: dict[str, dict], other: dict[str, dict], key: str = "acc") -> list[float]:
    """here[q][key] - other[q][key] for every question q both settings answered, in
    question order (the per-question differences every paired interval is taken over)."""
    return [here[q][key] - other[q][key] for q in sorted(here.keys() & other.keys())]


def power(here: dict[str, dict], other: dict[str, dict], seed: int, target: float = 0.04
          ) -> dict[str, Any] | None:
    """The minimum detectable difference (80% power, two-sided 5%) of accuracy here minus
    other, paired by question, and the questions needed at the same spread to bring it down
    to ``target``."""
    from dasd_cli.core.evaluate import minimum_detectable_difference

    diffs = paired(here, other)
    if len(diffs) < 2:
        return None
    mdd = minimum_detectable_difference(diffs, seed=seed)
    return {"questions": len(diffs), "minimum_detectable_difference": mdd, "target": target,
            "questions_for_target": math.ceil(len(diffs) * (mdd / target) ** 2) if mdd > 0 else len(diffs)}


def entering_cap_hits(run: Path, read: Records, seed: int) -> dict[str, Any] | None:
    """The share of training questions on which the student that enters mixed-policy hits
    its cap (one answer per question), with its interval."""
    path = run / "mp" / "das.student.jsonl.zst"
    if not path.is_file():
        return None
    hits: dict[str, list[float]] = defaultdict(list)
    for record in read(path):
        hits[record["prompt_id"]].append(float(record.get("finish_reason") == "length"))
    per_question = [sum(v) / len(v) for v in hits.values()]
    return {"questions": len(per_question), "cap_hits": _bootstrap(per_question, seed)}


def seed_repeats(units: dict[str, dict[str, dict]], seed: int) -> dict[str, Any] | None:
    """DAS minus random after stage 2, once per training seed on the same pools.

    ``units`` maps a setting name to `dasd eval`'s per-question tally: ``das-s2`` and
    ``random-s2`` (the run's own training seed, named ``main``) and ``das-s2-seedS`` and
    ``random-s2-seedS`` for each repeated seed S. Returns each seed's two accuracies and
    their paired difference with its interval, and the spread of the differences across
    seeds (None when no seed was repeated)."""
    seeds = sorted(name.removeprefix("das-s2-seed") for name in units
                   if name.startswith("das-s2-seed") and f"random-s2-seed{name.removeprefix('das-s2-seed')}" in units)
    if not seeds:
        return None
    pairs = {"main": ("das-s2", "random-s2"), **{s: (f"das-s2-seed{s}", f"random-s2-seed{s}") for s in seeds}}
    rows = {}
    for label, (das, random) in pairs.items():
        if das not in units or random not in units:
            continue
        shared = sorted(units[das].keys() & units[random].keys())
        rows[label] = {
            "questions": len(shared),
            "das": sum(units[das][q]["acc"] for q in shared) / len(shared),
            "random": sum(units[random][q]["acc"] for q in shared) / len(shared),
            "difference": _bootstrap(paired(units[das], units[random]), seed)}
    differences = [row["difference"][0] for row in rows.values()]
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)) if len(differences) > 1 else None
    return {"seeds": rows, "mean_difference": mean, "min": min(differences), "max": max(differences),
            "sd_across_seeds": spread}


def seed_lines(repeats: dict[str, Any] | None, ci: Callable[..., str]) -> list[str]:
    """The per-seed table of DAS minus random (markdown rows) and its spread, in words."""
    if repeats is None:
        return ["Not measured: no training seed was repeated (REPEAT_SEEDS=\"43 44\" repeats two)."]
    lines = ["| training seed | questions | DAS, stage 2 | random, stage 2 | DAS minus random (95% CI) |",
             "|---|---|---|---|---|"]
    for label, row in repeats["seeds"].items():
        name = "the run's own (TRAIN_SEED)" if label == "main" else label
        lines.append(f"| {name} | {row['questions']} | "
                     f"{100 * row['das']:.1f}% | {100 * row['random']:.1f}% | {ci(row['difference'], signed=True)} |")
    sd = repeats["sd_across_seeds"]
    lines += ["", f"Across {len(repeats['seeds'])} training seeds on the same pools, DAS minus random ranges "
              f"from {100 * repeats['min']:+.1f} to {100 * repeats['max']:+.1f} points (mean "
              f"{100 * repeats['mean_difference']:+.1f}"
              + ("" if sd is None else f", standard deviation across seeds {100 * sd:.1f}") + ")."]
    return lines
