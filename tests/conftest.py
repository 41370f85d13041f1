"""The fixtures every test file can ask for by name; the shared helper functions are in
helpers.py (a test file imports those, never another test file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_environment(tmp_path_factory) -> dict[str, str]:
    """`dasd train` converts packed data into token stores: the tests' go to a temp folder
    (inherited by every subprocess), not the user's cache. Returns the environment every
    test starts from."""
    os.environ["DASD_TOKEN_STORE"] = str(tmp_path_factory.mktemp("token-stores"))
    return dict(os.environ)


@pytest.fixture(autouse=True)
def _environment(_session_environment):
    """A command run in-process sets the variables that quiet libraries (io.quiet_libraries),
    from a test or from a module's fixture; each test starts from the session's environment
    and leaves it as it found it, so a subprocess run with --debug gets what a user's shell
    would give it."""
    os.environ.clear()
    os.environ.update(_session_environment)
    yield
    os.environ.clear()
    os.environ.update(_session_environment)


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


@pytest.fixture(scope="session")
def paper_tokenizers(tmp_path_factory) -> dict[str, Path]:
    """The paper's tokenizer folders, built once per session from quicktok-v1's vocabularies
    by examples/paper_tokenizers.py: name (gpt-oss, qwen3, qwen3-instruct-2507) -> folder."""
    import sys

    from helpers import ROOT

    pytest.importorskip("quicktok", reason="quicktok-v1 is not installed (make setup installs it)")
    sys.path.insert(0, str(ROOT / "examples"))
    import paper_tokenizers as builder

    return builder.build(tmp_path_factory.mktemp("paper-tokenizers"))
