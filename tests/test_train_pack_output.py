"""What dasd train writes for people: metrics are plain JSONL."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import parse_records, run_dasd, write_file
from test_train_recipe import make_samples, make_tiny_model, packed_records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


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
