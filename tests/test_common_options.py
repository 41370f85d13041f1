"""The shared flags: declared once (commands/common.py), spelled the same on every command."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from dasd_cli.commands import common

COMMANDS = ("filter", "mix", "pack", "sample", "score", "train")
SHARED = ("--output", "--compress", "--rejects", "--on-error", "--stats", "--quiet", "--debug")


def _command(name: str):
    from dasd_cli.manpages import cli_root

    return cli_root().commands[name]


def test_a_decorated_command_gets_its_own_flags_and_one_common() -> None:
    seen = {}

    @common.shared_options(seed=True, shard=True)
    def toy(shared: common.Common, level: Annotated[int, typer.Option("--level")] = 1) -> None:
        seen.update(shared=shared, level=level)

    app = typer.Typer()
    app.command()(toy)
    result = CliRunner().invoke(app, ["a.jsonl", "b.jsonl", "--level", "3", "-o", "out.jsonl", "--compress",
                                      "gzip", "--on-error", "skip", "--seed", "7", "--shard", "1/2", "-q"])
    assert result.exit_code == 0, result.output
    shared = seen["shared"]
    assert seen["level"] == 3
    assert (shared.inputs, shared.output, shared.compress, shared.on_error, shared.seed, shared.shard,
            shared.quiet, shared.debug) == (["a.jsonl", "b.jsonl"], "out.jsonl", "gzip", "skip", 7, "1/2",
                                            True, False)


def test_a_command_cannot_redeclare_a_shared_flag() -> None:
    with pytest.raises(TypeError, match="quiet"):
        @common.shared_options()
        def toy(shared: common.Common, quiet: bool = False) -> None:
            pass


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_the_shared_flags_spelled_alike(name: str) -> None:
    reference = {p.name: p for p in _command("pack").params}
    params = {p.name: p for p in _command(name).params}
    for flag in SHARED:
        key = flag.lstrip("-").replace("-", "_")
        assert params[key].opts == reference[key].opts and params[key].help == reference[key].help, flag
    assert ("seed" in params) == (name in ("mix", "sample", "train"))
    assert ("shard" in params) == (name in ("sample", "score"))


TYPOS = [
    (["filter", "--compress", "zsdt"], "--compress"),
    (["filter", "--on-error", "skp"], "--on-error"),
    (["filter", "--normalize", "harmny"], "--normalize"),
    (["mix", "--select", "dsa"], "--select"),
    (["pack", "--on-error", "ignore"], "--on-error"),
    (["sample", "--backend", "hff"], "--backend"),
    (["sample", "--dtype", "bf61"], "--dtype"),
    (["sample", "--device", "gpu"], "--device"),
    (["sample", "--backend", "openai", "--endpoint", "chats"], "--endpoint"),
    (["score", "--dtype", "float33"], "--dtype"),
    (["score", "--device", "tpu"], "--device"),
    (["score", "--compress", "xz"], "--compress"),
    (["train", "--dtype", "fp16"], "--dtype"),
    (["train", "--attn", "flash"], "--attn"),
]


@pytest.mark.parametrize(("args", "flag"), TYPOS, ids=[" ".join(a) for a, _ in TYPOS])
def test_a_typo_in_a_choice_is_a_usage_error_naming_the_flag(args: list[str], flag: str) -> None:
    """Exit 2 at parse time, before any input is read or model loaded (stdin holds a
    record that would otherwise load the default model)."""
    from helpers import run_dasd, to_jsonl

    record = {"id": "a", "prompt": "p", "response": "r", "finish_reason": "stop"}
    proc = run_dasd([*args, "-"], stdin=to_jsonl([record]), timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"Invalid value for '{flag}'" in err and proc.stdout == b""
