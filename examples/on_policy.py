"""Bookkeeping of examples/on-policy.mk: batch size, per-round JSON, the summary over rounds.

    python examples/on_policy.py batch PACK_STATS STEPS
        the global batch size that splits one round's packed sequences into STEPS
        optimizer steps (at most STEPS: ceil(sequences / ceil(sequences / STEPS)))
    python examples/on_policy.py heldout SCORE_STATS ROUND MODEL OUT
        OUT (round-K/heldout-kl.json): the model's reverse KL to the teacher per token on
        the held-out prompts, from `dasd score --role teacher --stats` of its own samples
    python examples/on_policy.py round WORK ROUND
        WORK/round-K/round.json: teacher tokens scored, samples aligned and dropped,
        the sampled KL on the training prompts, optimizer steps and the last step's metrics
    python examples/on_policy.py summary WORK ROUNDS
        WORK/summary.json: every round's numbers, and a table on stdout

Everything is read from what the dasd commands wrote (--stats files, metrics JSONL).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def batch(pack_stats: str, steps: str) -> int:
    sequences = int(_read(Path(pack_stats))["sequences"])
    if sequences < 1:
        raise SystemExit(f"{pack_stats}: no packed sequence to train on")
    return math.ceil(sequences / max(1, int(steps)))


def heldout(score_stats: str, round_: str, model: str, out: str) -> dict[str, Any]:
    stats = _read(Path(score_stats))
    data = {"round": int(round_), "model": model, "reverse_kl": stats["reverse_kl"],
            "kl_tokens": stats["kl_tokens"], "teacher_tokens": stats["teacher_tokens"],
            "samples": stats["read"], "aligned": stats["aligned"], "misaligned": stats["misaligned"]}
    _write(Path(out), data)
    return data


def round_summary(work: str, round_: str) -> dict[str, Any]:
    folder = Path(work) / f"round-{round_}"
    scores = [_read(p) for p in sorted((folder / "stats").glob("score.shard-*.json"))]
    pack = _read(folder / "stats" / "pack.json")
    last = {}
    for line in (folder / "train.metrics.jsonl").read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a killed run left half written
        last[m["step"]] = m  # a step redone after a resume is listed twice: the later one counts
    steps = [last[k] for k in sorted(last)]
    kl_tokens = sum(s["kl_tokens"] for s in scores)
    sampled_kl = (sum(s["reverse_kl"] * s["kl_tokens"] for s in scores if s["kl_tokens"]) / kl_tokens
                  if kl_tokens else None)
    data = {"round": int(round_), "teacher_tokens": sum(s["teacher_tokens"] for s in scores),
            "samples": sum(s["read"] for s in scores), "aligned": sum(s["aligned"] for s in scores),
            "misaligned": sum(s["misaligned"] for s in scores),
            "sampled_reverse_kl": round(sampled_kl, 6) if sampled_kl is not None else None,
            "packed_samples": pack["kept"], "sequences": pack["sequences"],
            "dropped_by_pack": pack.get("dropped_by_reason", {}), "steps": len(steps),
            "first_step": steps[0] if steps else None, "last_step": steps[-1] if steps else None}
    _write(folder / "round.json", data)
    return data


def summary(work: str, rounds: str) -> dict[str, Any]:
    root = Path(work)
    rows = []
    for k in range(int(rounds) + 1):
        folder = root / f"round-{k}"
        row: dict[str, Any] = {"round": k, "heldout": _read(folder / "heldout-kl.json")}
        if k:
            row["train"] = _read(folder / "round.json")
        rows.append(row)
    data = {"rounds": int(rounds), "per_round": rows,
            "teacher_tokens": {"training": sum(r["train"]["teacher_tokens"] for r in rows if "train" in r),
                               "heldout": sum(r["heldout"]["teacher_tokens"] for r in rows)}}
    _write(root / "summary.json", data)
    print("| round | held-out reverse KL per token | teacher tokens scored (training prompts) | steps |")
    print("|---|---|---|---|")
    for r in rows:
        train = r.get("train", {})
        print(f"| {r['round']} | {r['heldout']['reverse_kl']} | {train.get('teacher_tokens', '-')} | "
              f"{train.get('steps', '-')} |")
    return data


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "batch" and len(args) == 2:
        print(batch(*args))
    elif command == "heldout" and len(args) == 4:
        heldout(*args)
    elif command == "round" and len(args) == 2:
        round_summary(*args)
    elif command == "summary" and len(args) == 2:
        summary(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
