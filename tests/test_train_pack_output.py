"""What dasd train and pack write for people: metrics are plain JSONL; stderr holds dasd's
own lines only, library warnings and progress bars (DeepSpeed's accelerator line,
transformers' loading and writing bars) stay behind --debug."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_samples, make_tiny_model, packed_records, parse_records, run_dasd, write_file

RESPONSES = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "response": f"It is {2 * i}.",
              "finish_reason": "stop"} for i in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def foreign_lines(stderr: bytes, command: str) -> list[str]:
    """stderr lines that are not dasd's own (its messages and summary start 'dasd CMD')."""
    return [line for line in stderr.decode().splitlines() if line.strip() and not line.startswith("dasd ")]


def train_args(tmp_path: Path, tiny: Path) -> list[str]:
    from dasd_cli.core.chat import tokenizer_fingerprint
    from dasd_cli.model.load import load_tokenizer

    fingerprint = tokenizer_fingerprint(load_tokenizer(str(tiny)))  # as dasd pack writes it
    records = [{**record, "tokenizer": fingerprint} for record in packed_records(make_samples(4), 2)]
    data = write_file(tmp_path / "p.jsonl", records)
    return ["train", "--model", str(tiny), "--out", str(tmp_path / "o"), "--epochs", "1",
            "--global-batch-size", "1", "--dtype", "fp32", str(data)]


def test_train_metrics_are_plain_jsonl_on_a_pipe(tmp_path: Path, tiny: Path) -> None:
    result = run_dasd(train_args(tmp_path, tiny) + ["--quiet"])  # a pipe: auto meant zstd
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b'{"step":1,')
    assert [m["step"] for m in parse_records(result.stdout)] == [1, 2]


def test_train_stderr_is_dasd_only_and_empty_when_quiet(tmp_path: Path, tiny: Path) -> None:
    result = run_dasd(train_args(tmp_path, tiny) + ["--compress", "zstd"])
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"\x28\xb5\x2f\xfd")  # compressed when asked for
    assert foreign_lines(result.stderr, "train") == [], result.stderr.decode()
    assert "dasd train: read 2, trained on 2" in result.stderr.decode()
    metrics = tmp_path / "metrics.jsonl"
    result = run_dasd(train_args(tmp_path, tiny) + ["--out", str(tmp_path / "quiet"), "--quiet", "-o", str(metrics)])
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    assert len(parse_records(metrics.read_bytes())) == 2


def test_train_debug_shows_library_output(tmp_path: Path, tiny: Path) -> None:
    """The negative control: the chatter is there, and --debug lets it through."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed finds the GPU and has nothing to say")
    result = run_dasd(train_args(tmp_path, tiny) + ["--debug", "--quiet"])
    assert result.returncode == 0, result.stderr.decode()
    assert any("Setting accelerator to CPU" in line for line in foreign_lines(result.stderr, "train"))


def test_pack_stderr_is_dasd_only(tmp_path: Path) -> None:
    data = write_file(tmp_path / "r.jsonl", RESPONSES)
    out = tmp_path / "packed.jsonl"
    result = run_dasd(["pack", "--cutoff-len", "512", "-o", str(out), str(data)])
    assert result.returncode == 0, result.stderr.decode()
    assert foreign_lines(result.stderr, "pack") == [], result.stderr.decode()
    assert "dasd pack: read 4, packed 4" in result.stderr.decode()
    result = run_dasd(["pack", "--cutoff-len", "512", "--quiet", "-o", str(out), str(data)])
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    assert len(parse_records(out.read_bytes())) == 1


@pytest.mark.slow
def test_pack_converting_the_default_model_is_quiet(tmp_path: Path) -> None:
    """The first use of the embedded model converts its GGUF file (transformers loads and
    saves it: tqdm bars, and DeepSpeed's accelerator warning on import)."""
    data = write_file(tmp_path / "r.jsonl", RESPONSES)
    out = tmp_path / "packed.jsonl"
    result = run_dasd(["pack", "--cutoff-len", "512", "-o", str(out), str(data)],
                      env={"DASD_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr.decode()
    assert foreign_lines(result.stderr, "pack") == [], result.stderr.decode()
    assert len(parse_records(out.read_bytes())) == 1


def test_quiet_libraries_keeps_errors() -> None:
    import logging

    from dasd_cli import io

    io.quiet_libraries()
    logger = logging.getLogger("DeepSpeed")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU.")
        logger.error("a real failure")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in seen] == ["a real failure"]
