"""`--tokenizer DIR` takes a folder holding only a tokenizer (no config.json, no weights),
on every command that has the flag; its errors name --tokenizer, never --model."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import parse_records, run_dasd, to_jsonl
from fault_proxy import FakeOpenAI

RECORDS = [{"id": f"r{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i}+{i}?"}],
            "response": f"It is {2 * i}. " * (1 + 20 * i), "finish_reason": "stop"} for i in range(3)]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    """The embedded model's tokenizer saved on its own: tokenizer files, no config.json."""
    from dasd_cli.model.load import load_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer-only")
    load_tokenizer(None).save_pretrained(str(folder))
    assert (folder / "tokenizer_config.json").is_file() and not (folder / "config.json").exists()
    return folder


def test_pack_takes_a_tokenizer_folder(cli, tokenizer_folder: Path) -> None:
    code, default, err = cli(["pack", "--compress", "none", "--cutoff-len", "512", "-"], stdin=to_jsonl(RECORDS))
    assert code == 0, err
    code, out, err = cli(["pack", "--compress", "none", "--cutoff-len", "512", "--tokenizer", str(tokenizer_folder),
                          "-"], stdin=to_jsonl(RECORDS))
    assert code == 0, err
    # the same tokens, labels and fingerprint: dasd train accepts it for the default model
    assert parse_records(out) == parse_records(default) != []


def test_filter_takes_a_tokenizer_folder(cli, tokenizer_folder: Path) -> None:
    args = ["filter", "--compress", "none", "--no-repetition", "--cutoff-len", "100"]
    code, default, err = cli([*args, "-"], stdin=to_jsonl(RECORDS))
    assert code == 0, err
    code, out, err = cli([*args, "--tokenizer", str(tokenizer_folder), "-"], stdin=to_jsonl(RECORDS))
    assert code == 0, err
    kept = parse_records(out)
    assert kept == parse_records(default) and 0 < len(kept) < len(RECORDS) and "too_long" in err


def test_sample_openai_takes_a_tokenizer_folder(tokenizer_folder: Path) -> None:
    prompts = [{"id": "q", "prompt": "What is 2+2?"}]
    with FakeOpenAI() as server:
        proc = run_dasd(["sample", "--backend", "openai", "--base-url", server.url, "--endpoint", "completions",
                         "--tokenizer", str(tokenizer_folder), "--compress", "none", "-"],
                        stdin=to_jsonl(prompts), timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        # the prompt was rendered with the folder's chat template
        assert "What is 2+2?" in server.payloads[0]["prompt"] and "<|im_start|>" in server.payloads[0]["prompt"]
    assert [r["id"] for r in parse_records(proc.stdout)] == ["q@0.6#0"]


@pytest.mark.parametrize("command", [["pack"], ["filter", "--cutoff-len", "10"]])
def test_tokenizer_errors_name_the_tokenizer_flag(cli, tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, says in ((empty, "folder has no tokenizer.json or tokenizer_config.json"),
                       (tmp_path / "missing", "not a local tokenizer folder, model folder or .gguf file")):
        code, out, err = cli([*command, "--tokenizer", str(path), "-"], stdin=to_jsonl(RECORDS))
        assert code == 2 and parse_records(out) == []
        assert f"--tokenizer {path}: {says}" in err and "--model" not in err, err
