"""Run the named benchmarks and write bench/results/bench.{json,md}.

Each ``bench/bench_<name>.py`` defines ``run(quick: bool) -> list[dict]``; a row is
``{"benchmark", "metric", "value", "unit", "baseline", "baseline_value", "ratio",
"goal", "note"}``. Benchmarks measure against a baseline in the same run, alternating
the two sides, because this class of machine has slow phases: the ratio is the result,
absolute numbers are context.

    python bench/run.py [NAME...] [--quick]
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    return module


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# dasd benchmarks (commit {meta['commit']}, {meta['machine']})", "",
             "| benchmark | metric | value | unit | baseline | baseline value | ratio | goal | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in (
            "benchmark", "metric", "value", "unit", "baseline", "baseline_value", "ratio", "goal", "note")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")]
    found = discover()
    unknown = [n for n in names if n not in found]
    if unknown:
        print(f"unknown benchmark(s): {unknown}; have {sorted(found)}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    for name in names or sorted(found):
        print(f"== bench {name}", file=sys.stderr)
        start = time.time()
        for row in load(found[name]).run(quick):
            row.setdefault("benchmark", name)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        print(f"== bench {name} took {time.time() - start:.0f} s", file=sys.stderr)
    meta = {"commit": commit(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "python": platform.python_version(), "quick": quick}
    RESULTS.mkdir(exist_ok=True)
    suffix = "-" + "-".join(names) if names else ""
    (RESULTS / f"bench{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"bench{suffix}.md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
