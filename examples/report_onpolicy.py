"""The on-policy arm of a `make reproduce` run: examples/on-policy.mk under RUN/on-policy/das,
started from the DAS stage-2 checkpoint, next to mixed-policy from the same checkpoint.

- the student's reverse KL to the teacher per token on the held-out prompts, round by
  round, and each round minus round 0 paired by prompt (dasd eval's bootstrap, seeded);
- the teacher tokens each arm consumed: teacher generation for mixed-policy (its
  continuations), teacher scoring for on-policy (every round's samples).

Used by examples/report.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

Records = Callable[[Path], list[dict[str, Any]]]


def prompt_kl(records: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """Per prompt: the sum of log pi_sampler - log pi_teacher over the tokens of its aligned
    samples, and their count (`dasd score --role teacher` output)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for record in records:
        scores = record.get("teacher_scores")
        if not scores or not scores.get("aligned"):
            continue
        sampled, teacher = record["sampler"]["logprobs"], scores["logprobs"]
        if len(sampled) != len(teacher):
            raise SystemExit(f"report: {record['id']}: {len(sampled)} sampled log-probs, "
                             f"{len(teacher)} teacher log-probs on an aligned record")
        tally = out[record["prompt_id"]]
        tally[0] += sum(s - t for s, t in zip(sampled, teacher, strict=True))
        tally[1] += len(sampled)
    return {prompt: (total, int(count)) for prompt, (total, count) in out.items()}


def kl_rounds(work: Path, read_records: Records, seed: int) -> dict[str, Any] | None:
    """Every round's held-out reverse KL per token: over all tokens (the score --stats of its
    samples) and as the mean over prompts of each prompt's per-token KL; and each later
    round minus round 0 in that per-prompt mean, paired over the prompts both measured,
    with a 95% interval. None when the arm has not run."""
    from dasd_cli.core.evaluate import paired_bootstrap

    summary_path = work / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    first: dict[str, float] = {}
    rows = []
    for row in summary["per_round"]:
        k = row["round"]
        per = prompt_kl(read_records(work / f"round-{k}" / "heldout.scored.jsonl.zst"))
        means = {p: total / count for p, (total, count) in per.items() if count}
        if k == 0:
            first = means
        shared = sorted(means.keys() & first.keys())
        change = (paired_bootstrap([means[p] - first[p] for p in shared], seed=seed)
                  if k and shared else None)
        train = row.get("train", {})
        rows.append({"round": k, "reverse_kl": row["heldout"]["reverse_kl"],
                     "per_prompt_mean": sum(means.values()) / len(means) if means else None,
                     "kl_tokens": row["heldout"]["kl_tokens"], "prompts": len(means),
                     "minus_round_0": change, "paired_prompts": len(shared) if k else None,
                     "teacher_tokens": train.get("teacher_tokens"), "steps": train.get("steps"),
                     "samples": train.get("packed_samples")})
    return {"rounds": rows, "teacher_tokens": summary["teacher_tokens"]}


def teacher_tokens(stats: dict[str, dict[str, Any]], found: dict[str, Any] | None) -> dict[str, int | None]:
    """Teacher tokens each arm consumed after stage 2: generated for mixed-policy's
    continuations, scored for on-policy's training samples (all rounds)."""
    continued = [v for k, v in stats.items() if k.startswith("6-mp-continue-")]
    return {"mixed-policy (generated)": sum(v.get("tokens", 0) for v in continued) if continued else None,
            "on-policy (scored)": found["teacher_tokens"]["training"] if found else None}


def _nats(result: tuple[float, float, float] | None) -> str:
    """"-0.0123 [-0.0200, -0.0050]" (nats per token, 95% CI) or "-"."""
    if result is None:
        return "-"
    mean, low, high = result
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def lines(found: dict[str, Any] | None, tokens: dict[str, int | None]) -> list[str]:
    """The report's on-policy section."""
    if found is None:
        return ["The on-policy arm did not run (RUN/on-policy/das/summary.json is missing)."]
    out = [("| round | held-out reverse KL / token: all tokens | mean over prompts | minus round 0 "
            "(95% CI) | prompts | training samples | optimizer steps | teacher tokens scored |"),
           "|---|---|---|---|---|---|---|---|"]
    for r in found["rounds"]:
        mean = f"{r['per_prompt_mean']:.4f}" if r["per_prompt_mean"] is not None else "-"
        out.append(f"| {r['round']} | {r['reverse_kl']:.4f} | {mean} | {_nats(r['minus_round_0'])} | "
                   f"{r['prompts']} | "
                   f"{r['samples'] if r['samples'] is not None else '-'} | "
                   f"{r['steps'] if r['steps'] is not None else '-'} | "
                   f"{r['teacher_tokens'] if r['teacher_tokens'] is not None else '-'} |")
    out += ["", "| arm, after stage 2 | teacher tokens |", "|---|---|"]
    out += [f"| {name} | {count if count is not None else '-'} |" for name, count in tokens.items()]
    heldout = found["teacher_tokens"]["heldout"]
    out += ["", f"Held-out measurement: {heldout} teacher tokens scored over {len(found['rounds'])} rounds."]
    return out
