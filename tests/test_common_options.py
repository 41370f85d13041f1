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


# --------------------------------------------------------------------------- settings

SHARED_PARAMS = {"inputs", "output", "compress", "rejects", "on_error", "stats", "quiet", "debug",
                 "seed", "shard"}


def _settings_classes() -> dict[str, type]:
    from dasd_cli.pipeline.evaluating import EvalSettings
    from dasd_cli.pipeline.filtering import FilterSettings
    from dasd_cli.pipeline.importing import ImportSettings
    from dasd_cli.pipeline.mixing import MixSettings
    from dasd_cli.pipeline.packing import PackSettings
    from dasd_cli.pipeline.sampling import SampleSettings
    from dasd_cli.pipeline.scoring import ScoreSettings
    from dasd_cli.training.recipe import TrainConfig

    return {"eval": EvalSettings, "filter": FilterSettings, "import": ImportSettings,
            "mix": MixSettings, "pack": PackSettings, "sample": SampleSettings,
            "score": ScoreSettings, "train": TrainConfig}


@pytest.mark.parametrize("name", ["eval", "filter", "import", "mix", "pack", "sample", "score", "train"])
def test_the_settings_object_has_a_field_for_every_flag(name: str) -> None:
    """--stats' options are the command's settings object, so it must hold every flag the
    command declares (besides the shared ones; hidden, deprecated names aside)."""
    from dataclasses import fields

    renamed = {"compare_with": "compare"}  # eval's --compare (compare is a function there)
    flags = {renamed.get(p.name, p.name).rstrip("_") for p in _command(name).params
             if not p.hidden} - SHARED_PARAMS
    held = {f.name.rstrip("_") for f in fields(_settings_classes()[name])}
    assert flags - held == set()


def test_settings_json_is_the_fields_as_plain_json() -> None:
    """Field names as keys (a keyword's trailing underscore dropped); sets as sorted lists,
    paths as text, enum members as their value."""
    from dataclasses import dataclass
    from enum import Enum
    from pathlib import Path

    class Mode(str, Enum):
        raw = "raw"

    @dataclass
    class Toy:
        continue_: bool
        out: Path
        accept: frozenset[str]
        modes: list[Mode]
        pair: tuple[float, float]

    options = common.settings_json(Toy(continue_=True, out=Path("ckpt/a"), accept=frozenset({"b", "a"}),
                                       modes=[Mode.raw], pair=(0.9, 0.95)))
    assert options == {"continue": True, "out": "ckpt/a", "accept": ["a", "b"], "modes": ["raw"],
                       "pair": [0.9, 0.95]}


def test_stats_options_are_the_settings_the_command_ran_with(tmp_path) -> None:
    """One run end to end: the --stats options of `dasd filter` are its settings' fields,
    as given on the command line (and the defaults of the others)."""
    import orjson

    from helpers import run_dasd, to_jsonl
    from dasd_cli.pipeline.filtering import FilterSettings

    stats = tmp_path / "stats.json"
    record = {"id": "a", "messages": [{"role": "user", "content": "q"}], "response": "r",
              "finish_reason": "stop"}
    proc = run_dasd(["filter", "--workers", "1", "--tool-call-pattern", "CALL", "--stats", str(stats), "-"],
                    stdin=to_jsonl([record]), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    options = orjson.loads(stats.read_bytes())["options"]
    assert set(options) == {f for f in FilterSettings.__dataclass_fields__}
    assert options["workers"] == 1 and options["tool_call_pattern"] == ["CALL"]
    assert options["truncated"] is True and options["cutoff_len"] is None
