"""Shared test helpers: run dasd in-process (CliRunner) or as a real subprocess."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _token_stores(tmp_path_factory):
    """`dasd train` converts packed data into token stores: the tests' go to a temp folder
    (inherited by every subprocess), not the user's cache."""
    os.environ["DASD_TOKEN_STORE"] = str(tmp_path_factory.mktemp("token-stores"))
    yield


def dasd_bin() -> list[str]:
    """The dasd console script next to this interpreter, or `python -m dasd_cli.cli`."""
    script = Path(sys.executable).with_name("dasd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dasd_cli.cli"]


def to_jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)


def decode(data: bytes) -> bytes:
    """Decompress output bytes by their magic (all zstd frames)."""
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    return data


def parse_records(data: bytes) -> list[dict[str, Any]]:
    """Every line must be a JSON object: this is how tests check 'valid JSONL'."""
    text = decode(data)
    assert text == b"" or text.endswith(b"\n"), "output does not end with a newline"
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def write_file(path: Path, records: list[dict[str, Any]], kind: str = "plain") -> Path:
    data = to_jsonl(records)
    if kind == "zstd":
        data = zstd_bytes(data)
    elif kind == "gzip":
        data = gzip_bytes(data)
    path.write_bytes(data)
    return path


def run_dasd(args: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run dasd as a subprocess (the real CLI, real streams)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(dasd_bin() + args, input=stdin if stdin is not None else b"",
                          capture_output=True, env=full_env, timeout=timeout)


@pytest.fixture
def cli():
    """Invoke dasd in-process: returns (exit_code, stdout bytes, stderr text)."""
    from typer.testing import CliRunner

    from dasd_cli.cli import app

    runner = CliRunner()

    def invoke(args: list[str], stdin: bytes | None = None) -> tuple[int, bytes, str]:
        result = runner.invoke(app, args, input=stdin, catch_exceptions=False)
        return result.exit_code, result.stdout_bytes, result.stderr

    return invoke
