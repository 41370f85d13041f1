"""Every EXAMPLES block of every man page, and README's pipeline, run as written.

Each block runs under bash in a fresh folder that holds small fixture files named as the
examples name them (prompts.jsonl, samples.jsonl.zst, scored.jsonl.zst, ...), with
``./student`` and ``./teacher`` (README: STUDENT and TEACHER) as folders of the embedded
default model. A block must exit 0, and where the page says what it produces, a check
below reads it back; a block whose lines after its command start with `#` shows its
output there, and stdout must equal it. Blocks that run a model are marked slow. Blocks that cannot run on
one CPU machine are listed in CANNOT_RUN with the reason; nothing else is skipped.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import ROOT, parse_records, run_dasd, write_file
from dasd_cli.model.load import DEFAULT_MODEL_NAME
from dasd_cli.core.das import DEFAULT_BETA
from dasd_cli.core.segment import sentence_spans

MAN_SOURCES = ROOT / "man" / "src"

# A substring of the block -> why it cannot run here. Keep this short.
CANNOT_RUN = {
    "--backend openai": "needs an OpenAI-compatible server (vLLM serve) listening on 127.0.0.1:8000",
    "torchrun --nproc-per-node 8": "needs eight GPUs",
    "torchrun --nnodes 2": "needs two nodes of eight GPUs",
    # The 135M default rambles to the 32768-token cap at T=1.0 on some seeds: tens of
    # minutes on a shared CPU (their flags are covered by tests/test_sample_hf.py).
    "-n 4 --max-tokens 32768": "generates up to 32768 tokens per sample: too slow on a CPU",
    "--continue --max-tokens 32768": "generates up to 32768 tokens per sample: too slow on a CPU",
    "-n 64 aime.jsonl": "64 samples per AIME question at up to 1024 tokens each: hours on a CPU",
    "--tokenizer ./gpt-oss-tokenizer": "gpt-oss's tokenizer (o200k_harmony) is not installed here "
                                       "(tests/test_import.py runs the join with another tokenizer)",
}

# The commands that load a model (or its tokenizer): sample, score (unless it only shows
# or plots scored records without --model), pack, train, filter --cutoff-len.
MODEL_COMMAND = re.compile(r"(dasd|dasd_cli\.cli) (sample|pack|train)\b|dasd filter [^|]*--cutoff-len"
                           r"|dasd score(?![^|]*--(explain|plot))|dasd score [^|]*--model")


def literal_blocks(text: str) -> list[str]:
    """The 4-space-indented literal blocks of a markdown text, unindented."""
    blocks: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("    ") and line.strip():
            if not inside:
                blocks.append([])
            blocks[-1].append(line[4:])
        inside = line.startswith("    ") and bool(line.strip())
    return ["\n".join(block) for block in blocks]


def shown_output(block: str) -> str | None:
    """The output a block shows as `#` lines after its command (`# ` cut off), or None."""
    shown = [line for line in block.splitlines()[1:] if line.startswith("#")]
    return "".join(line[2:] + "\n" for line in shown) if shown else None


def section(text: str, name: str) -> str:
    match = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def man_examples() -> list[tuple[str, str]]:
    """(page-N, block) for every EXAMPLES block of every man page source."""
    examples = []
    for source in sorted(MAN_SOURCES.glob("*.md")):
        for i, block in enumerate(literal_blocks(section(source.read_text(encoding="utf-8"), "EXAMPLES"))):
            examples.append((f"{source.stem}-{i + 1}", block))
    return examples


def readme_pipeline() -> str:
    """README's sample | filter | score | mix | pack, then train, block."""
    (block,) = literal_blocks(section((ROOT / "README.md").read_text(encoding="utf-8"), "A pipeline"))
    return block


def cases() -> list[Any]:
    params = []
    for name, block in man_examples() + [("README-pipeline", readme_pipeline())]:
        reason = next((why for key, why in CANNOT_RUN.items() if key in block), None)
        if reason is not None:
            marks: list[Any] = [pytest.mark.skip(reason=reason)]
        else:
            marks = [pytest.mark.slow] if MODEL_COMMAND.search(block) else []
        params.append(pytest.param(name, block, id=name, marks=marks))
    return params


# --------------------------------------------------------------------------- fixture files


def sampler_fields(response: str, temperature: float = 0.6) -> dict[str, Any]:
    """A sampler object (the teacher's) with one token per word (offsets at word starts)."""
    offsets = [m.start() for m in re.finditer(r"\S+\s*", response)]
    return {"model": "teacher", "temperature": temperature, "top_p": 1.0, "seed": 0,
            "logprobs": [-0.25] * len(offsets), "offsets": offsets, "logprobs_mode": "raw"}


def response_record(record_id: str, question: str, response: str, *, domain: str = "other",
                    reference: dict | None = None, finish_reason: str = "stop",
                    temperature: float = 0.6) -> dict[str, Any]:
    """A response record as `dasd sample` writes it; ``record_id`` without @T#K gets @T#0."""
    if "@" not in record_id:
        record_id = f"{record_id}@{temperature:g}#0"
    record: dict[str, Any] = {
        "id": record_id, "prompt_id": record_id.split("@")[0], "domain": domain,
        "messages": [{"role": "user", "content": question}], "response": response,
        "finish_reason": finish_reason, "sampler": sampler_fields(response, temperature)}
    if reference is not None:
        record["reference"] = reference
    return record


ADD = "```python\ndef add(a, b):\n    return a + b\n```"
SAMPLES = [
    response_record("sum@0.6#0", "What is 2+3?", "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is \\boxed{5}.",
                    domain="math", reference={"answer": "5"}),
    response_record("sum@0.6#1", "What is 2+3?", "<think>\n2 plus 3 is 6.\n</think>\n\nSo \\boxed{6}.",
                    domain="math", reference={"answer": "5"}),
    response_record("add@0.6#0", "Write add(a, b).", f"<think>\nReturn the sum.\n</think>\n\n{ADD}",
                    domain="code", reference={"tests": "assert add(2, 3) == 5"}),
    response_record("add@0.6#1", "Write add(a, b).",
                    f"<think>\nReturn the difference.\n</think>\n\n{ADD.replace('a + b', 'a - b')}",
                    domain="code", reference={"tests": "assert add(2, 3) == 5"}),
    response_record("cut", "Name a colour.", "<think>\nLet me think about col", finish_reason="length"),
    response_record("capital", "What is the capital of France?", "Paris is the capital of France."),
]
# Verdicts of the pages' filter examples on SAMPLES: (by, reason) of each dropped id.
VERIFY_DROPS = {"sum@0.6#1": ("verify", "wrong_answer"), "add@0.6#1": ("verify", "tests_failed"),
                "cut@0.6#0": ("truncated", "truncated")}
THINK_DROPS = {"cut@0.6#0": ("truncated", "truncated"), "capital@0.6#0": ("structure", "no_think")}

# Rows of the released Superior-Reasoning-SFT-gpt-oss-120b data (`dasd import`).
SUPERIOR_ROWS = [{"uuid": f"00000000-0000-4000-8000-00000000000{i}", "input": question,
                  "output": f"<think>\n{reasoning}\n</think>\n\n{answer}", "domain": domain, "meta": "{}"}
                 for i, (question, reasoning, answer, domain) in enumerate([
                     ("What is 2+3?", "2 plus 3 is 5.", "\\boxed{5}", "math"),
                     ("Say hello.", "One word.", "Hello.", "instruction_following")])]

QUOTA_DOMAINS = {"math": 5000, "code": 3000, "science": 2000}
# One scored response per prompt, as `dasd score ... | dasd mix --per-prompt 1` leaves them
# (scored by another student: its das is replaced when a page scores them again).
BEST = [{**r, "das": {"student": "other-student", "beta": 0.0, "counts": {"teacher": 0, "shared": 1, "student": 0},
                     "score": 0, "p_teacher": 0.5, "p_student": 0.5,
                     "sentences": [{"start": 0, "end": len(r["response"]), "p_teacher": 0.5,
                                    "p_student": 0.5, "type": "shared"}]}}
        for r in SAMPLES if r["id"] in ("sum@0.6#0", "add@0.6#0", "capital@0.6#0")]


def response_mean(sentences: list[dict[str, Any]], record: dict[str, Any], key: str) -> float:
    """The response's geometric-mean probability: its sentences' weighted by their tokens."""
    offsets = record["sampler"]["offsets"]
    tokens = [sum(s["start"] <= o < s["end"] for o in offsets) for s in sentences]
    log_sum = sum(n * math.log(s[key]) for n, s in zip(tokens, sentences))
    return round(math.exp(log_sum / sum(tokens)), 6)


def scored_records() -> list[dict[str, Any]]:
    """Records as `dasd score` (default student and beta) writes them: more than the pages'
    quotas in every domain. Sample 0 of a prompt ends in a student sentence, sample 1 in a
    teacher sentence (its das.score is 1); the others are shared."""
    records = []
    for domain, count in QUOTA_DOMAINS.items():
        for i in range(count + 50):
            for k, temperature in enumerate((0.6, 1.0)):
                response = f"<think>\nStep one for {domain} {i}.\n</think>\n\nAnswer {i}-{k}."
                record = response_record(f"{domain}{i}@{temperature:g}#{k}", f"Question {domain} {i}?",
                                         response, domain=domain, temperature=temperature)
                *shared, last = sentence_spans(response)
                sentences = [{"start": a, "end": b, "p_teacher": 0.8, "p_student": 0.75, "type": "shared"}
                             for a, b in shared]
                sentences.append({"start": last[0], "end": last[1], "p_teacher": 0.9 if k else 0.3,
                                  "p_student": 0.5 if k else 0.6, "type": "teacher" if k else "student"})
                record["das"] = {"student": DEFAULT_MODEL_NAME, "beta": DEFAULT_BETA,
                                 "counts": {"teacher": k, "shared": len(shared), "student": 1 - k}, "score": k,
                                 "p_teacher": response_mean(sentences, record, "p_teacher"),
                                 "p_student": response_mean(sentences, record, "p_student"),
                                 "sentences": sentences}
                records.append(record)
    return records


def plain_responses(source: str, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{source}-{i}", "prompt_id": f"{source}-q{i}", "domain": "math",
             "messages": [{"role": "user", "content": f"{source} question {i}"}],
             "response": f"<think>\nWork for {i}.\n</think>\n\n{i}"} for i in range(count)]


def stage_records(prefix: str) -> list[dict[str, Any]]:
    """A few short responses: a training stage small enough to train on one CPU."""
    pairs = [("What is 2+3?", "<think>\n2+3=5\n</think>\n\n5"), ("Name a colour.", "Blue."),
             ("What is 4*2?", "<think>\n4*2=8\n</think>\n\n8")]
    return [response_record(f"{prefix}{i}", q, a) for i, (q, a) in enumerate(pairs)]


def write_fixtures(folder: Path) -> None:
    """Every input file the examples name that needs no model to make."""
    write_file(folder / "prompts.jsonl", [
        {"id": "sum", "prompt": "What is 2+3? Answer with the number.", "domain": "math",
         "reference": {"answer": "5"}},
        {"id": "capital", "prompt": "What is the capital of France? One word.", "domain": "other"}])
    write_file(folder / "samples.jsonl.zst", SAMPLES, "zstd")
    write_file(folder / "filtered.jsonl.zst", [r for r in SAMPLES if r["id"] not in VERIFY_DROPS], "zstd")
    write_file(folder / "answers.jsonl.zst", [r for r in SAMPLES if r["finish_reason"] == "stop"], "zstd")
    # The teacher's answers are a few tokens long, so the student capped at 1.5 times that
    # length is truncated and the teacher has a continuation to write.
    write_file(folder / "teacher.jsonl.zst", [
        response_record("short", "What is 2+3? Answer with the number.", "5", temperature=1.0),
        response_record("city", "What is the capital of France? One word.", "Paris", temperature=1.0)], "zstd")
    write_file(folder / "scored.jsonl.zst", scored_records(), "zstd")
    write_file(folder / "stage2.samples.jsonl.zst", SAMPLES, "zstd")
    write_file(folder / "best.jsonl.zst", BEST, "zstd")
    write_file(folder / "stage1.eval.jsonl.zst", [
        {**r, "eval": {"correct": False, "reason": "wrong_answer", "answer": None}} for r in SAMPLES
        if "reference" in r], "zstd")
    write_file(folder / "mixed.jsonl.zst", plain_responses("mixed", 7750), "zstd")
    write_file(folder / "offpolicy.jsonl.zst", plain_responses("offpolicy", 20050), "zstd")
    write_file(folder / "stage1.jsonl.zst", stage_records("s1-"), "zstd")
    write_file(folder / "superior-stage1.jsonl", SUPERIOR_ROWS)
    long_answer = "<think>\n" + " ".join(f"w{i}" for i in range(9000)) + "\n</think>\n\nDone."
    write_file(folder / "mix.jsonl.zst", stage_records("m-") + [response_record("long", "Count.", long_answer)],
               "zstd")
    shutil.copytree(ROOT / "configs", folder / "configs")


@pytest.fixture(scope="session")
def fixture_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("example-inputs")
    write_fixtures(folder)
    return folder


@pytest.fixture(scope="session")
def model_folder() -> Path:
    """The embedded default model as a transformers folder (converted once, cached)."""
    from dasd_cli.model.load import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def packed_folder(tmp_path_factory, model_folder) -> Path:
    """Packed training data for the default model's tokenizer, made by `dasd pack`."""
    folder = tmp_path_factory.mktemp("example-packed")
    for name, prefix in (("stage1.packed.jsonl.zst", "s1-"), ("stage2.packed.jsonl.zst", "s2-"),
                         ("packed.jsonl", "p-")):
        source = write_file(folder / f"{prefix}source.jsonl", stage_records(prefix))
        done = run_dasd(["pack", "--cutoff-len", "512", "-o", str(folder / name), str(source)])
        assert done.returncode == 0, done.stderr.decode()
        source.unlink()
    return folder


@pytest.fixture
def workdir(request, tmp_path, fixture_folder) -> Path:
    """A fresh folder with every fixture; model folders only for blocks that need them."""
    shutil.copytree(fixture_folder, tmp_path, dirs_exist_ok=True)
    if request.node.get_closest_marker("slow"):
        model = request.getfixturevalue("model_folder")
        for name in ("student", "student-b", "teacher", "STUDENT", "TEACHER"):
            (tmp_path / name).symlink_to(model, target_is_directory=True)
        if "--distilled ckpt/stage2" in request.node.callspec.params["block"]:
            # read only: the trained stage 2 student (never a block's --out: that would
            # write into the cached default model)
            (tmp_path / "ckpt").mkdir()
            (tmp_path / "ckpt" / "stage2").symlink_to(model, target_is_directory=True)
        shutil.copytree(request.getfixturevalue("packed_folder"), tmp_path, dirs_exist_ok=True)
    return tmp_path


def run_block(block: str, folder: Path) -> subprocess.CompletedProcess:
    """The block under bash, as a user types it: `dasd` and `torchrun` on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=folder, env=env,
                          capture_output=True, timeout=900)


# --------------------------------------------------------------------------- what the pages claim


def records(path: Path) -> list[dict[str, Any]]:
    return parse_records(path.read_bytes())


def rejected(path: Path) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["rejected"]["by"], r["rejected"]["reason"]) for r in records(path)}


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in rows}


def check_filter_length(folder: Path, out: bytes, err: str) -> None:
    assert ids(records(folder / "kept.jsonl.zst")) == ids(SAMPLES) - {"cut@0.6#0"}


def check_filter_verify(folder: Path, out: bytes, err: str) -> None:
    assert rejected(folder / "rejects.jsonl.zst") == VERIFY_DROPS
    assert ids(records(folder / "verified.jsonl.zst")) == ids(SAMPLES) - set(VERIFY_DROPS)


def check_filter_think(folder: Path, out: bytes, err: str) -> None:
    assert rejected(folder / "rejects.jsonl.zst") == THINK_DROPS
    scored = parse_records(out)
    assert ids(scored) == ids(SAMPLES) - set(THINK_DROPS) and all("das" in r for r in scored)


def check_mix_das(folder: Path, out: bytes, err: str) -> None:
    best = records(folder / "stage1.jsonl.zst")
    prompts = Counter(r["prompt_id"] for r in best)
    assert set(prompts) == {r["prompt_id"] for r in SAMPLES}
    assert set(prompts.values()) == {1} and all("das" in r for r in best)


def check_quotas(out_records: list[dict[str, Any]]) -> None:
    assert Counter(r["domain"] for r in out_records) == QUOTA_DOMAINS
    assert all(r["id"].endswith("@1#1") for r in out_records)  # the higher das.score per prompt


def check_file_counts(folder: Path, out: bytes, err: str) -> None:
    mixed = records(folder / "stage3.jsonl.zst")
    assert Counter(r["id"].split("-")[0] for r in mixed) == {"mixed": 7700, "offpolicy": 20000}


def check_pack(folder: Path, out: bytes, err: str) -> None:
    packed = records(folder / "stage1.packed.jsonl.zst")
    assert sorted(i for r in packed for i in r["ids"]) == sorted(r["id"] for r in stage_records("s1-"))
    for record in packed:
        assert len(record["input_ids"]) == len(record["labels"]) == len(record["position_ids"]) <= 65536
    fingerprints = {record["tokenizer"] for record in packed}  # one tokenizer packed them all
    assert len(fingerprints) == 1 and re.fullmatch(r"sha256:[0-9a-f]{16}", fingerprints.pop())


def check_no_pack(folder: Path, out: bytes, err: str) -> None:
    unpacked = records(folder / "unpacked.jsonl.zst")
    assert (folder / "unpacked.jsonl.zst").read_bytes().startswith(b"\x28\xb5\x2f\xfd")  # zstd on a pipe
    assert all(len(r["ids"]) == 1 and len(r["input_ids"]) <= 8192 for r in unpacked)
    assert sorted(r["ids"][0] for r in unpacked) == sorted(r["id"] for r in stage_records("m-"))
    assert rejected(folder / "too-long.jsonl.zst") == {"long@0.6#0": ("pack", "over_cutoff")}


def check_sample(folder: Path, out: bytes, err: str) -> None:
    samples = records(folder / "samples.jsonl.zst")
    assert sorted(r["id"] for r in samples) == sorted(
        f"{p}@{t}#{k}" for p in ("sum", "capital") for t in ("0.6", "1") for k in range(4))
    assert all(len(r["sampler"]["logprobs"]) == len(r["sampler"]["offsets"]) for r in samples)


def check_mixed_policy(folder: Path, out: bytes, err: str) -> None:
    continued = parse_records(out)
    assert {r["prompt_id"] for r in continued} == {"short", "city"}
    for record in continued:
        assert 0 < record["prefix_chars"] <= len(record["response"])


def check_score_best(folder: Path, out: bytes, err: str) -> None:
    best = records(folder / "best.jsonl.zst")
    assert Counter(r["prompt_id"] for r in best) == Counter({"sum": 1, "add": 1, "capital": 1})


def check_explain_stored(folder: Path, out: bytes, err: str) -> None:
    view = out.decode()
    assert "mean p_T" in view and "\x1b[" not in view  # the view, on stdout, plain in a pipe
    assert "Step one for math 0" in view and "scoring with" not in err  # the stored das, no model


def check_explain_pager(folder: Path, out: bytes, err: str) -> None:
    assert "\x1b[" in out.decode() and "mean p_T" in out.decode()  # --color always, through less
    rescored = records(folder / "rescored.jsonl.zst")
    assert ids(rescored) == ids(BEST) and all(r["das"].get("student_key") for r in rescored)
    assert "scoring with" in err


def check_eval_table(folder: Path, out: bytes, err: str) -> None:
    table = (folder / "table.md").read_text(encoding="utf-8")
    assert table.lstrip().startswith(("|", "#", "accuracy")) and "teacher" in table and "pass@" in table


def check_eval_compare(folder: Path, out: bytes, err: str) -> None:
    evaluated = records(folder / "stage2.eval.jsonl")
    assert ids(evaluated) == ids(SAMPLES) and all("eval" in r for r in evaluated if "reference" in r)
    assert "paired bootstrap" in err


def check_eval_jq(folder: Path, out: bytes, err: str) -> None:
    wrong = [orjson.loads(line) for line in out.splitlines()]
    assert wrong == [{"correct": False, "reason": "wrong_answer", "answer": "6"}]


def check_html_and_plot(folder: Path, out: bytes, err: str) -> None:
    page = (folder / "view.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    assert (folder / "temps.png").read_bytes().startswith(b"\x89PNG")


def check_provenance(folder: Path, out: bytes, err: str) -> None:
    scored = records(folder / "provenance.jsonl.zst")
    assert ids(scored) == ids(SAMPLES) - {"cut@0.6#0"}
    assert all(r["das"].get("distilled") == "stage2" for r in scored)


def trained(folder: Path, out: str, metrics: str | None = None) -> None:
    assert (folder / out / "config.json").is_file() and (folder / out / "model.safetensors").is_file()
    if metrics is not None:
        text = (folder / metrics).read_bytes()
        assert text.startswith(b"{")  # plain JSONL, as the name says
        steps = [orjson.loads(line) for line in text.splitlines()]
        assert steps and all("loss" in s for s in steps)


def check_import(folder: Path, out: bytes, err: str) -> None:
    got = records(folder / "stage1.responses.jsonl.zst")
    assert [r["id"] for r in got] == [r["uuid"] for r in SUPERIOR_ROWS]
    assert [r["domain"] for r in got] == ["math", "instruction"]
    assert all(r["response"] == s["output"] for r, s in zip(got, SUPERIOR_ROWS))


def check_stages(folder: Path, out: bytes, err: str) -> None:
    trained(folder, "ckpt/stage1", "stage1.metrics.jsonl")
    trained(folder, "ckpt/stage2", "stage2.metrics.jsonl")
    assert (folder / "stage1.png").read_bytes().startswith(b"\x89PNG")


def check_resume(folder: Path, out: bytes, err: str) -> None:
    trained(folder, "ckpt/stage1")


def check_gloo(folder: Path, out: bytes, err: str) -> None:
    trained(folder, "ckpt/test")


def check_on_policy(folder: Path, out: bytes, err: str) -> None:
    """./student and ./teacher are one model here: every advantage is 0 (up to float noise)."""
    packed = records(folder / "onpolicy.packed.jsonl.zst")
    assert packed and all("sampler_logprobs" in r and "teacher_logprobs" in r for r in packed)
    targets = [(s, t) for r in packed for label, s, t in zip(r["labels"], r["sampler_logprobs"],
                                                            r["teacher_logprobs"]) if label != -100]
    # sampling (with a KV cache) and teacher-forced scoring differ by float noise (bf16 where fast)
    assert targets and abs(sum(t - s for s, t in targets) / len(targets)) < 0.05
    trained(folder, "ckpt/onpolicy", "onpolicy.metrics.jsonl")
    steps = records(folder / "onpolicy.metrics.jsonl")
    assert all(abs(m["advantage"]) < 0.05 and "clip_fraction" in m for m in steps)


def check_readme(folder: Path, out: bytes, err: str) -> None:
    packed = records(folder / "stage1.packed.jsonl.zst")
    assert packed and all(len(r["input_ids"]) <= 65536 for r in packed)
    trained(folder, "ckpt/stage1")


# A substring of a block -> the check of what it claims to produce (every block that has it).
CHECKS: dict[str, Callable[[Path, bytes, str], None]] = {
    "--cutoff-len 65536 --tokenizer ./student samples.jsonl.zst": check_filter_length,
    "-o verified.jsonl.zst": check_filter_verify,
    "--require-think": check_filter_think,
    "--per-prompt 1 -o stage1.jsonl.zst": check_mix_das,
    "-o stage1.responses.jsonl.zst": check_import,
    "--quota math=5000": lambda folder, out, err: check_quotas(parse_records(out)),
    "offpolicy.jsonl.zst:20000": check_file_counts,
    "--cutoff-len 65536 stage1.jsonl.zst": check_pack,
    "--no-pack": check_no_pack,
    "-o samples.jsonl.zst": check_sample,
    "--continue": check_mixed_policy,
    "-o best.jsonl.zst": check_score_best,
    "--explain --limit 2 scored": check_explain_stored,
    "--color always scored.jsonl.zst | less -R": check_explain_pager,
    "--report-file table.md": check_eval_table,
    "--compare stage1.eval.jsonl.zst": check_eval_compare,
    ".prompt_id == \"sum\"": check_eval_jq,
    "-o view.html": check_html_and_plot,
    "--distilled": check_provenance,
    "--init-from ckpt/stage1": check_stages,
    "--out ckpt/stage1 --resume": check_resume,
    "--out ckpt/test": check_gloo,
    "--objective reverse-kl --init-from ./student": check_on_policy,
    "dasd sample --model TEACHER": check_readme,
}


def test_every_check_names_a_block():
    blocks = [block for _, block in man_examples()] + [readme_pipeline()]
    for key in [*CHECKS, *CANNOT_RUN]:
        assert any(key in block for block in blocks), key


def test_every_block_is_checked_or_listed_as_not_runnable():
    pages = {name.rsplit("-", 1)[0] for name, _ in man_examples()}
    assert pages == {p.stem for p in MAN_SOURCES.glob("*.md")} - {"dasd"}  # dasd(1) has no EXAMPLES
    for name, block in man_examples() + [("README-pipeline", readme_pipeline())]:
        assert any(key in block for key in [*CHECKS, *CANNOT_RUN]), name


@pytest.mark.parametrize("name,block", cases())
def test_example_runs(name: str, block: str, workdir: Path) -> None:
    done = run_block(block, workdir)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{block}\n{err[-3000:]}"
    shown = shown_output(block)
    if shown is not None:
        assert done.stdout.decode() == shown
    for key, check in CHECKS.items():
        if key in block:
            check(workdir, done.stdout, err)
