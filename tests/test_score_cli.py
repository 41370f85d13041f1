"""dasd score through the CLI: errors and pre-scored records (no model), then a real run
(slow): SmolLM2 samples at T=0.6 and T=1.0 scored against a 10-layer student cut from
SmolLM2, with the --explain terminal view, the HTML page in headless chromium, --plot."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from helpers import dasd_bin, parse_records, run_dasd, scored_record, to_jsonl, zstd_bytes
from dasd_cli.core.segment import sentence_spans
from dasd_cli.report.explain import ANSI


# (type, p_T, p_S, p_D) of each sentence: counts 2 teacher, 1 shared, 3 student, 1 boosted,
# so a tag that stood for the wrong type would miscount.
FOUR_TYPES = [("teacher", 0.9, 0.5, 0.88), ("shared", 0.7, 0.72, 0.75), ("student", 0.2, 0.6, 0.4),
              ("boosted", 0.5, 0.45, 0.9), ("student", 0.21, 0.42, 0.3), ("teacher", 0.8, 0.3, 0.7),
              ("student", 0.1, 0.5, 0.2)]


def four_type_record() -> dict:
    """A record scored with a distilled student (--distilled): every sentence type."""
    response = ("The sum is 5. Check: 2 plus 3 is 5. Maybe it is 6.\nNo, it is 5.\n"
                "The answer is 5. Both add to 5. So it is 5.")
    spans = sentence_spans(response)
    assert len(spans) == len(FOUR_TYPES)
    sentences = [{"start": a, "end": b, "p_teacher": pt, "p_student": ps, "p_distilled": pd, "type": kind}
                 for (a, b), (kind, pt, ps, pd) in zip(spans, FOUR_TYPES)]
    counts = {kind: sum(s["type"] == kind for s in sentences) for kind in ("teacher", "shared", "student", "boosted")}
    record = scored_record(0)
    record["response"] = response
    record["das"].update({"distilled": "stage2", "alpha": 0.1, "counts": counts, "score": counts["teacher"],
                          "p_teacher": 0.5, "p_student": 0.48, "p_distilled": 0.55, "sentences": sentences})
    return record


def test_explain_gives_every_sentence_type_its_own_tag(cli, tmp_path):
    """--color never: a legend names one tag per type, and each sentence's tag (with its
    p_T/p_S/p_D) counts up to the record's das.counts, type by type. The colored view and
    the HTML page use the same tags, and their legends show each type's color."""
    record = four_type_record()
    code, out, err = cli(["score", "--explain", "--color", "never", "-"], stdin=to_jsonl([record]))
    assert code == 0, err
    view = out.decode()
    legend, header = view.splitlines()[:2]
    named = dict(re.findall(r"\b(\w+) (teacher|shared|student|boosted)\b", legend))
    assert set(named.values()) == set(record["das"]["counts"]) and len(set(named)) == 4, legend
    assert "[TAG p_T/p_S/p_D]" in legend and header.startswith("== p0@0.6#0")
    tags = re.findall(r"\[(\w+) (\d\.\d\d)/(\d\.\d\d)/(\d\.\d\d)\]", view)
    assert Counter(named[tag] for tag, *_ in tags) == Counter(record["das"]["counts"])
    assert [(named[tag], float(pt), float(ps), float(pd)) for tag, pt, ps, pd in tags] == FOUR_TYPES
    assert "p_D 0.55" in header

    code, out, _ = cli(["score", "--explain", "--color", "always", "-"], stdin=to_jsonl([record]))
    colored = out.decode()
    assert code == 0 and re.sub(r"\x1b\[[0-9;]*m", "", colored) == view  # the same text, colored
    legend = colored.splitlines()[0]
    for tag, kind in named.items():
        assert f"{ANSI[kind]}{tag} {kind}" in legend  # each type's name in its color

    page = tmp_path / "view.html"
    code, _, err = cli(["score", "--explain", "-o", str(page), "-"], stdin=to_jsonl([record]))
    text = page.read_text()
    assert code == 0, err
    for tag, kind in named.items():
        assert f'<span class="{kind}">{tag} {kind}</span>' in text
    found = re.findall(r'<span class="s (\w+)"[^>]*>[^<]*</span><span class="tag">\[(\w+) ', text)
    assert [(kind, named[tag]) for kind, tag in found] == [(kind, kind) for kind, *_ in FOUR_TYPES]


def test_missing_teacher_logprobs_is_an_error_naming_the_record(cli):
    record = {"id": "q7@1.0#0", "prompt": "Hi?", "response": "Hello there."}
    code, out, err = cli(["score", "-"], stdin=to_jsonl([record]))
    assert code == 1
    assert "q7@1.0#0" in err and "sampler.logprobs" in err and "(<stdin>:1)" in err
    record["sampler"] = {"logprobs": [], "offsets": []}
    code, out, err = cli(["score", "--on-error", "skip", "-"], stdin=to_jsonl([record]))
    assert code == 0 and "skipped 1 (no_teacher_logprobs 1)" in err
    legacy = {k: v for k, v in record.items() if k != "sampler"} | {"teacher": record["sampler"]}
    code, out, err = cli(["score", "--on-error", "skip", "-"], stdin=to_jsonl([legacy]))
    assert code == 0 and "skipped 1 (no_teacher_logprobs 1)" in err  # read under the earlier name too


def test_prefix_offsets_must_be_in_teacher_part(cli):
    record = scored_record(1) | {"prefix_chars": 20}
    del record["das"]
    code, _, err = cli(["score", "-"], stdin=to_jsonl([record]))
    assert code == 1 and "prefix_chars (20)" in err


def test_bad_flags_are_usage_errors(cli):
    code, _, err = cli(["score", "--backend", "nope", "-"], stdin=to_jsonl([scored_record(0)]))
    assert code == 2 and "--backend" in err
    code, _, err = cli(["score", "--backend", "openai", "-"], stdin=to_jsonl([scored_record(0)]))
    assert code == 2 and "cannot score" in err


def test_explain_without_a_model_shows_the_stored_das_on_stdout(cli, tmp_path):
    """No --model: the view shows what the file holds (no model loaded, no re-scoring), as
    plain text on a pipe, with no records (and no zstd) on stdout."""
    records = [scored_record(i) for i in range(3)]
    for record in records:
        record["das"]["p_teacher"] = 0.123  # a stored value no model would reproduce
    code, out, err = cli(["score", "--explain", "--limit", "2", "-"], stdin=to_jsonl(records))
    assert code == 0, err
    view = out.decode()
    assert not out.startswith(b"\x28\xb5\x2f\xfd") and "\x1b[" not in view
    assert view.startswith("T teacher, Sh shared, St student; each sentence ends in [TAG p_T/p_S]\n")
    assert "[T 0.90/0.50]" in view and "[St 0.20/0.60]" in view and "Then step two." in view
    assert view.count("== p") == 2 and "p_T 0.12" in view and "teacher          2     0.900     0.500" in view
    assert '"das"' not in view and "scoring with" not in err
    assert "dasd score: read 2, kept 2" in err  # the view reads only what it shows


def test_explain_color_and_records_with_o(cli, tmp_path):
    records = [scored_record(i) for i in range(3)]
    code, out, _ = cli(["score", "--explain", "--color", "always", "-"], stdin=to_jsonl(records))
    assert code == 0 and b"\x1b[32m" in out and out.count(b"== p") == 1
    code, out, _ = cli(["score", "--explain", "--color", "never", "-"], stdin=to_jsonl(records))
    assert code == 0 and b"\x1b[" not in out
    kept = tmp_path / "kept.jsonl"
    code, out, err = cli(["score", "--explain", "--limit", "2", "-o", str(kept), "-"], stdin=to_jsonl(records))
    assert code == 0, err
    assert parse_records(kept.read_bytes()) == records  # every record, unchanged, in the file
    assert out.count(b"== p") == 2 and b'"das"' not in out
    page = tmp_path / "view.html"
    code, out, err = cli(["score", "--explain", "--limit", "3", "-o", str(page), "-"], stdin=to_jsonl(records))
    assert code == 0 and out == b""
    text = page.read_text()
    assert text.count("<svg") == 3 and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    code, _, err = cli(["score", "--explain", "--color", "sometimes", "-"], stdin=to_jsonl(records))
    assert code == 2 and "--color" in err


def test_explain_and_plot_without_a_model_need_a_das(cli, tmp_path):
    records = [scored_record(0), scored_record(1)]
    del records[1]["das"]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(to_jsonl(records))
    code, out, err = cli(["score", "--explain", "--limit", "2", str(path)])
    assert code == 1 and f"({path}:2)" in err and "no das" in err and "--model" in err
    plot = tmp_path / "hist.png"
    code, out, err = cli(["score", "--plot", str(plot), "--on-error", "skip", str(path)])
    assert code == 0 and "skipped 1 (not_scored 1)" in err
    assert parse_records(out) == records[:1]  # --plot alone still passes records on
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_in_a_real_pipe_is_text(tmp_path):
    """`dasd score --explain FILE | head`: the view, as text, on the pipe; head closing it early
    is no error."""
    path = tmp_path / "scored.jsonl.zst"
    path.write_bytes(zstd_bytes(to_jsonl([scored_record(i) for i in range(200)])))
    proc = run_dasd(["score", "--explain", "--limit", "200", str(path)])
    assert proc.returncode == 0, proc.stderr.decode()
    legend, first = proc.stdout.split(b"\n")[:2]
    assert legend.startswith(b"T teacher") and first.startswith(b"== p0@0.6#0")
    assert proc.stdout.count(b"\n== p") == 200
    shell = subprocess.run(" ".join(dasd_bin()) + f" score --explain --limit 200 {path} | head -n 2",
                           shell=True, capture_output=True, timeout=120)
    assert shell.returncode == 0 and shell.stdout.split(b"\n")[:2] == [legend, first]
    assert shell.stdout.count(b"\n") == 2
    assert b"Traceback" not in shell.stderr and b"error" not in shell.stderr


def fake_model(folder: Path, weights: bytes) -> Path:
    """A model folder as far as the cache key goes (config and a weights file)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_reuse_is_keyed_on_model_content_and_beta(cli, tmp_path):
    """A stored das is reused only for the same model content and beta; the folder's name
    does not count. The record has no teacher log-probs, so scoring it again is an error:
    exit 0 means the das was reused, exit 1 that score tried to score."""
    from dasd_cli.model.load import model_key

    quick = fake_model(tmp_path / "quick" / "student", b"weights of the quick run")
    full = fake_model(tmp_path / "full" / "student", b"weights of the full run")
    assert model_key(str(quick)) != model_key(str(full))
    record = scored_record(0)
    record["sampler"] = {"logprobs_mode": "raw"}
    record["das"] |= {"student": "student", "student_key": model_key(str(quick))}
    data = to_jsonl([record])
    code, out, err = cli(["score", "--model", str(quick), "-"], stdin=data)
    assert code == 0, err
    assert parse_records(out) == [record]
    code, _, err = cli(["score", "--model", str(full), "-"], stdin=data)  # same name, other weights
    assert code == 1 and "sampler.logprobs" in err
    code, _, err = cli(["score", "--model", str(quick), "--beta", "0.05", "-"], stdin=data)
    assert code == 1 and "sampler.logprobs" in err
    old = scored_record(0)  # scored before das.student_key existed: its name alone is no proof
    old["sampler"] = {"logprobs_mode": "raw"}
    old["das"]["student"] = "student"
    code, _, err = cli(["score", "--model", str(quick), "-"], stdin=to_jsonl([old]))
    assert code == 1 and "sampler.logprobs" in err


def test_teacher_logprobs_must_be_raw_unless_accepted(cli, tmp_path):
    """processed, unknown and missing logprobs_mode are bad records (named FILE:LINE, with the
    flag in the hint) until --accept-logprobs names them; reuse does not bypass the check."""
    from dasd_cli.model.load import model_key

    student = fake_model(tmp_path / "student", b"weights")
    good = scored_record(0)
    good["das"]["student_key"] = model_key(str(student))
    processed = scored_record(1)
    processed["das"]["student_key"] = good["das"]["student_key"]
    processed["sampler"]["logprobs_mode"] = "processed"
    missing = scored_record(2)
    missing["das"]["student_key"] = good["das"]["student_key"]
    missing["teacher"] = missing.pop("sampler")  # a file of an earlier version: the same check
    del missing["teacher"]["logprobs_mode"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(to_jsonl([good, processed, missing]))
    code, out, err = cli(["score", "--model", str(student), str(path)])
    assert code == 1 and f"({path}:2)" in err and "logprobs_mode is processed, not raw" in err
    assert "--accept-logprobs processed" in err
    rejects = tmp_path / "rejects.jsonl"
    code, out, err = cli(["score", "--model", str(student), "--on-error", "skip", "--rejects", str(rejects),
                          str(path)])
    assert code == 0 and "skipped 2 (logprobs_processed 1, logprobs_unknown 1)" in err
    assert [r["id"] for r in parse_records(out)] == [good["id"]]
    assert [r["rejected"]["reason"] for r in parse_records(rejects.read_bytes())] == ["logprobs_processed",
                                                                                      "logprobs_unknown"]
    code, out, err = cli(["score", "--model", str(student), "--accept-logprobs", "unknown", str(path)])
    assert code == 1 and f"({path}:2)" in err
    code, out, err = cli(["score", "--model", str(student), "--accept-logprobs", "unknown",
                          "--accept-logprobs", "processed", str(path)])
    assert code == 0, err
    assert parse_records(out) == [good, processed, missing]
    code, _, err = cli(["score", "--accept-logprobs", "raw", str(path)])
    assert code == 2 and "--accept-logprobs" in err


def test_model_key_follows_content_not_name_or_mtime(tmp_path):
    from dasd_cli.model.load import model_key

    a = fake_model(tmp_path / "a" / "m", b"x" * 100)
    b = fake_model(tmp_path / "b" / "m", b"x" * 100)
    assert model_key(str(a)) == model_key(str(b))  # same content, other place
    os.utime(b / "model.safetensors", (0, 0))
    assert model_key(str(a)) == model_key(str(b))
    (b / "model.safetensors").write_bytes(b"x" * 99 + b"y")
    assert model_key(str(a)) != model_key(str(b))
    (b / "model.safetensors").write_bytes(b"x" * 100)
    (b / "config.json").write_text('{"model_type": "qwen2"}')
    assert model_key(str(a)) != model_key(str(b))


def test_student_is_scored_on_the_messages_the_teacher_was_sent(cli, monkeypatch):
    """`dasd sample --system-prompt X` then `dasd score` without the flag: the student's
    prompt holds X (a fake student backend records what it is asked)."""
    from dasd_cli.backends.base import Scored
    from dasd_cli.pipeline import scoring
    from fault_proxy import FakeOpenAI

    system = "Answer like a pirate."
    with FakeOpenAI() as server:
        code, sampled, err = cli(["sample", "--backend", "openai", "--base-url", server.url, "--compress",
                                  "none", "--system-prompt", system, "--server-logprobs", "raw", "-"],
                                 stdin=to_jsonl([{"id": "q", "prompt": "What is 2 + 2?"}]))
        assert code == 0, err
        teacher_saw = server.payloads[0]["messages"]
    asked = []

    class Student:
        def score(self, requests):
            for request in requests:
                asked.append(request.messages)
                n = len(request.response)
                yield Scored(request.key, [-0.1] * n, list(range(n)))

        def close(self):
            pass

    monkeypatch.setattr(scoring, "open_backend", lambda spec, settings: Student())
    code, out, err = cli(["score", "--compress", "none", "-"], stdin=sampled)
    assert code == 0, err
    assert asked == [teacher_saw] and asked[0][0] == {"role": "system", "content": system}
    assert "das" in parse_records(out)[0]


# ------------------------------------------------------------------ the real run (slow)

PROMPTS = ["What is 12 + 7? Answer briefly.", "Name the capital of France in one sentence.",
           "Is 9 a prime number? Explain in one sentence."]


@pytest.fixture(scope="module")
def teacher_records():
    """SmolLM2 samples at T=0.6 and T=1.0 with raw log-probs, via the hf backend."""
    from dasd_cli.backends.base import GenerationRequest
    from dasd_cli.backends.hf import HFBackend
    from dasd_cli.model.load import DEFAULT_MODEL_NAME

    backend = HFBackend(None, dtype="fp32", device="cpu")
    requests = [GenerationRequest(f"p{i}@{t}#0", [{"role": "user", "content": p}], temperature=t,
                                  max_tokens=40, seed=i) for t in (0.6, 1.0) for i, p in enumerate(PROMPTS)]
    out = {g.key: g for g in backend.generate(requests)}
    records = []
    for r in requests:
        g = out[r.key]
        records.append({"id": r.key, "prompt_id": r.key.split("@")[0], "messages": r.messages,
                        "response": g.text, "finish_reason": g.finish_reason,
                        "sampler": {"model": DEFAULT_MODEL_NAME, "temperature": r.temperature, "top_p": 1.0,
                                    "seed": r.seed, "logprobs": g.logprobs, "offsets": g.offsets,
                                    "logprobs_mode": g.logprobs_mode}})
    return records


@pytest.fixture(scope="module")
def small_student(tmp_path_factory):
    """A 10-layer student: every third decoder layer of SmolLM2, saved as a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd_cli.model.load import resolve_model

    source = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[::3])
    model.config.num_hidden_layers = len(model.model.layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[::3]
    folder = tmp_path_factory.mktemp("models") / "student-10l"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_real_run_scores_explains_and_plots(cli, tmp_path, teacher_records, small_student):
    data = to_jsonl(teacher_records)
    kept = tmp_path / "scored.jsonl"
    code, out, err = cli(["score", "--model", str(small_student), "--keep-token-logprobs", "-o", str(kept),
                          "--explain", "--limit", "2", "--plot", str(tmp_path / "p.png"), "-"], stdin=data)
    assert code == 0, err
    assert "dasd score: scoring with student-10l" in err  # --explain with --model says it scores
    scored = parse_records(kept.read_bytes())
    assert [r["id"] for r in scored] == [r["id"] for r in teacher_records]  # input order
    for record in scored:
        das = record["das"]
        assert das["student"] == "student-10l" and das["beta"] == 0.1
        assert das["score"] == das["counts"]["teacher"]
        assert sum(das["counts"].values()) == len(das["sentences"])
        spans = [(s["start"], s["end"]) for s in das["sentences"]]
        assert spans[0][0] == 0 and spans[-1][1] == len(record["response"])
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert 0 < das["p_teacher"] <= 1 and 0 < das["p_student"] <= 1
        assert len(das["student_logprobs"]) == len(das["student_offsets"]) > 0
        expected = __import__("math").exp(sum(record["sampler"]["logprobs"]) / len(record["sampler"]["logprobs"]))
        assert das["p_teacher"] == pytest.approx(expected, rel=1e-5)
    # the view on stdout: every sentence of the first two records, then the summary table
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.decode())
    for record in scored[:2]:
        for s in record["das"]["sentences"]:
            assert record["response"][s["start"]:s["end"]].strip() in plain
    assert "mean score (teacher sentences)" in plain and "dasd score: read 6, kept 6" in err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # the student is not the teacher: some sentence differs by more than beta
    assert any(s["type"] != "shared" for r in scored for s in r["das"]["sentences"])

    page = tmp_path / "run.html"
    code, _, err = cli(["score", "--explain", "--limit", "6", "-o", str(page), "--model", str(small_student), "-"],
                       stdin=to_jsonl(scored))
    assert code == 0, err
    assert "scoring with" not in err  # the same student by content: every das reused
    _check_page_in_browser(page, scored)


def _check_page_in_browser(page: Path, scored: list[dict]) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium) - HTML not rendered")
    env = {**os.environ, "HOME": str(page.parent)}
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120, env=env).stdout
    assert "<svg" in dom and dom.count("<section>") == len(scored)
    for i, record in enumerate(scored):
        for j, s in enumerate(record["das"]["sentences"]):
            text = html.escape(record["response"][s["start"]:s["end"]], quote=False)
            assert f'id="r{i}s{j}"' in dom and text in dom, f"sentence {j} of {record['id']} not shown"


@pytest.mark.slow
def test_distilled_provenance_and_teacher_consistency(cli, teacher_records, small_student):
    """With the teacher itself as the 'distilled' model, p_D must reproduce p_T: the teacher's
    sampling log-probs and a teacher-forced pass of the same model agree, sentence by sentence."""
    from dasd_cli.model.load import resolve_model

    teacher_folder = str(resolve_model(None))
    code, out, err = cli(["score", "--model", str(small_student), "--distilled", teacher_folder,
                          "--alpha", "0.2", "--dtype", "fp32", "-"], stdin=to_jsonl(teacher_records[:3]))
    assert code == 0, err
    diffs = []
    for record in parse_records(out):
        das = record["das"]
        assert das["distilled"] == Path(teacher_folder).name and das["alpha"] == 0.2
        assert set(das["counts"]) == {"teacher", "shared", "student", "boosted"}
        assert das["p_distilled"] == pytest.approx(das["p_teacher"], abs=0.02)
        for s in das["sentences"]:
            diffs.append(abs(s["p_distilled"] - s["p_teacher"]))
            if s["type"] == "boosted":
                assert s["p_distilled"] - max(s["p_teacher"], s["p_student"]) > 0.2
    assert max(diffs) < 0.05, f"teacher-forced p_D differs from sampled p_T by up to {max(diffs):.3f}"
