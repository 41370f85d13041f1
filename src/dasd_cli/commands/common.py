"""What every subcommand shares: the common flags (defined once) and the run loop.

A command function declares only its own flags and takes the shared ones as one
:class:`Common` (its first parameter); :func:`shared_options` adds the shared flags to
the signature typer reads. The command hands a body function to :func:`run_command`,
which opens the streams, counts, prints the summary line, writes ``--stats`` and maps
every failure to its exit status (DESIGN.md "Errors and exit codes").
"""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal, Optional, get_type_hints

import typer

from dasd_cli import interrupts, io
from dasd_cli.core.tally import Tally
from dasd_cli.errors import DasdError, RecordError, UsageError

# --------------------------------------------------------------------------- shared flags


def choice(*values: str) -> Any:
    """The type of a flag that takes one of fixed values (a str): a typo is a usage error
    (exit 2) naming the flag and the values, raised before the command runs."""
    return Literal[values]


Inputs = Annotated[Optional[list[str]], typer.Argument(
    help="Input record files (JSONL; zstd, gzip or plain, sniffed). None or '-' reads stdin.",
    show_default=False, metavar="[FILE]...")]
Output = Annotated[Optional[str], typer.Option(
    "--output", "-o", help="Write records to PATH (atomically: temp file, then rename) instead of stdout.",
    metavar="PATH", show_default=False)]
Compress = Annotated[choice(*io.COMPRESS_CHOICES), typer.Option(
    "--compress", help="Output compression: auto (zstd on a pipe, plain on a terminal, "
    "by extension for -o), zstd, gzip or none.", metavar="|".join(io.COMPRESS_CHOICES))]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary line.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice (recorded in --stats).")]
Stats = Annotated[Optional[str], typer.Option(
    "--stats", help="Also write the summary counts as JSON to PATH.", metavar="PATH", show_default=False)]
Rejects = Annotated[Optional[str], typer.Option(
    "--rejects", help="Write every dropped or skipped record to PATH, with a 'rejected' "
    "object {by, reason, detail}.", metavar="PATH", show_default=False)]
OnError = Annotated[choice("fail", "skip"), typer.Option(
    "--on-error", help="On a bad record (malformed JSON, missing field): fail (exit 1) or "
    "skip (count it, write it to --rejects, go on).", metavar="fail|skip")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
# filter --verify and eval check answers with the same verifiers.
DEFAULT_MATH_TIMEOUT = 5
MathTimeout = Annotated[int, typer.Option(
    "--math-timeout", min=1, metavar="SECONDS",
    help="Time limit for parsing and comparing one math answer.")]
# filter, score and pack build the student's prompt from a record's messages.
SystemPrompt = Annotated[Optional[str], typer.Option(
    "--system-prompt", metavar="TEXT",
    help="Only for records without a system turn: adds one. Not needed after `dasd "
    "sample`, whose records carry the messages the teacher was sent (system turn included); "
    "on records sampled without a system turn it adds one the teacher never saw.",
    show_default=False)]
Shard = Annotated[Optional[str], typer.Option(
    "--shard", metavar="K/N", help="Process only the input records whose index i (from 0, over "
    "all inputs) has i mod N == K, to split one job across N machines; the others are counted "
    "as other_shards.", show_default=False)]
# The two vLLM engine settings users tune most (sample and score --backend vllm).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default
GpuMemoryUtilization = Annotated[float, typer.Option(
    "--gpu-memory-utilization", min=0.01, max=1.0, metavar="FRACTION", help="vllm: share of GPU "
    "memory the engine takes for weights, activations and KV cache (lower it when another "
    "process shares the GPU).")]
MaxModelLen = Annotated[Optional[int], typer.Option(
    "--max-model-len", min=1, metavar="N", help="vllm: longest prompt + response the engine plans "
    "for (default: the model's context; lower it to fit the KV cache).", show_default=False)]
EnforceEager = Annotated[bool, typer.Option(
    "--enforce-eager", help="vllm: run the model eagerly, without graph compilation or capture: "
    "the engine starts sooner and runs slower (worth it for short jobs).")]

DEFAULT_SEED = 42


@dataclass
class Common:
    """The shared flags of one invocation."""

    inputs: list[str] | None = None
    output: str | None = None
    compress: str = "auto"
    quiet: bool = False
    seed: int = DEFAULT_SEED
    stats: str | None = None
    rejects: str | None = None
    on_error: str = "fail"
    debug: bool = False
    shard: str | None = None  # --shard K/N as typed (sample, score); see parse_shard

    def validate(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise UsageError(f"--on-error must be fail or skip, not {self.on_error!r}")
        io.resolve_compression(self.compress, self.output)
        parse_shard(self.shard)


# The shared tail of every command's signature: (name, annotation, default), in --help order.
_SHARED_TAIL = (("output", Output, None), ("compress", Compress, "auto"), ("rejects", Rejects, None),
                ("on_error", OnError, "fail"), ("stats", Stats, None), ("quiet", Quiet, False),
                ("debug", Debug, False))


def shared_options(*, inputs: Any = Inputs, seed: bool = False,
                   shard: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare the shared flags of a command once.

    The decorated function takes a :class:`Common` as its first parameter, followed by
    the command's own flags. The function typer sees has the ``[FILE]...`` argument
    (``inputs``: another ``Annotated`` argument to describe them differently), the
    command's flags, then -o, --compress, --rejects, --on-error, --stats, -q, --debug,
    and with ``seed``/``shard`` also --seed and --shard; it builds the ``Common`` from
    them and calls the command.
    """
    shared: list[tuple[str, Any, Any]] = [("inputs", inputs, None)]
    if seed:
        shared.append(("seed", Seed, DEFAULT_SEED))
    if shard:
        shared.append(("shard", Shard, None))
    shared.extend(_SHARED_TAIL)
    names = [name for name, _, _ in shared]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(command, include_extras=True)
        own = list(inspect.signature(command).parameters.values())[1:]  # after the Common
        clash = set(names) & {p.name for p in own}
        if clash:
            raise TypeError(f"{command.__name__} redeclares shared flags: {sorted(clash)}")
        kind = inspect.Parameter.KEYWORD_ONLY

        def param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
            return inspect.Parameter(name, kind, annotation=annotation, default=default)

        params = ([param(*shared[0])] + [param(p.name, hints[p.name], p.default) for p in own]
                  + [param(*item) for item in shared[1:]])

        @functools.wraps(command)
        def wrapper(**values: Any) -> None:
            common = Common(**{name: values.pop(name) for name in names if name in values})
            command(common, **values)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# --------------------------------------------------------------------------- the run loop


class Session:
    """The streams and counts of one command run."""

    def __init__(self, command: str, common: Common, *, writes_records: bool = True,
                 settings: Any = None) -> None:
        self.command = command
        self.common = common
        self.settings = settings  # the command's settings (a dataclass): --stats' options
        self.tally = Tally(command)
        self.writer: io.RecordWriter | None = None
        self.rejects: io.RecordWriter | None = None
        self._writes_records = writes_records
        self.kept_word = "kept"
        self.interrupted = False

    def open(self) -> None:
        if self.common.rejects:
            self.rejects = io.RecordWriter(self.common.rejects, "auto")
        if self._writes_records:
            self.writer = io.RecordWriter(self.common.output, self.common.compress)

    def close(self, success: bool) -> None:
        errors: list[BaseException] = []
        for writer in (self.writer, self.rejects):
            if writer is None:
                continue
            try:
                # An interrupted or failed run keeps every complete record it wrote to
                # stdout; an -o temp file only takes its final name on success.
                writer.close(success)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- reading
    def records(self, inputs: list[str] | None = None, shard: tuple[int, int] | None = None
                ) -> Iterator[io.Line]:
        """Every input record in order (this shard's, with ``shard=(K, N)``); each is counted.

        Records of other shards are not read as far as the summary goes (read = kept +
        dropped + skipped holds per shard); their number is ``other_shards``.
        """
        paths = io.check_inputs(self.common.inputs if inputs is None else inputs)
        sink = io.SkipSink(self.tally, self.rejects, self.command)
        for index, line in enumerate(io.iter_lines(paths, self.common.on_error, sink)):
            if shard is not None and index % shard[1] != shard[0]:
                self.tally.extra["other_shards"] = self.tally.extra.get("other_shards", 0) + 1
                continue
            self.tally.read += 1
            yield line

    def raw_records(self, inputs: list[str] | None = None) -> Iterator[io.RawLine]:
        """Every input line, unparsed and not counted yet: hand each to :meth:`parse`, or
        count it with ``tally.read`` once another process parsed it."""
        yield from io.iter_raw_lines(io.check_inputs(self.common.inputs if inputs is None else inputs))

    def parse(self, raw: io.RawLine) -> io.Line | None:
        """Parse and count one raw line; None for a malformed line skipped by --on-error skip."""
        try:
            line = io.parse_line(raw)
        except RecordError as err:
            if self.common.on_error != "skip":
                raise
            io.SkipSink(self.tally, self.rejects, self.command).skip(err, err.raw)  # type: ignore[attr-defined]
            return None
        self.tally.read += 1
        return line

    # -- outcomes
    def emit(self, record: dict[str, Any]) -> None:
        """Write a kept record."""
        assert self.writer is not None
        self.writer.write(record)
        self.tally.keep()

    def drop(self, line: io.Line | dict[str, Any], by: str, reason: str, detail: str = "") -> None:
        """Count a dropped record and route it to --rejects."""
        self.tally.drop(reason)
        if self.rejects is not None:
            record = line.record if isinstance(line, io.Line) else line
            self.rejects.write(io.with_rejection(record, by, reason, detail))

    def bad_record(self, line: io.Line, err: RecordError) -> None:
        """A record the command cannot use: stop, or skip it under --on-error skip."""
        err.located(line.source, line.line)
        if self.common.on_error != "skip":
            raise err
        self.tally.read -= 1  # Tally.skip counts the read itself
        self.tally.skip(err.reason)
        if self.rejects is not None:
            self.rejects.write(io.with_rejection(line.record, self.command, err.reason,
                                                 f"{err.message} ({err.source}:{err.line})"))

    # -- reporting
    def finish(self) -> None:
        stats = self.tally.as_dict()
        stats["seed"] = self.common.seed
        stats["options"] = settings_json(self.settings) if self.settings is not None else {}
        if self.interrupted:
            stats["interrupted"] = True
        if self.common.stats:
            io.write_json_atomic(self.common.stats, stats)
        if not self.common.quiet:
            line = self.tally.summary(self.kept_word)
            io.say(line + (" (interrupted)" if self.interrupted else ""))


def run_command(command: str, common: Common, body: Callable[[Session], None], *,
                settings: Any = None, writes_records: bool = True) -> None:
    """Run ``body`` inside the stream and error discipline every command shares.

    ``settings`` is the command's settings object, a dataclass built once from its flags:
    --stats writes its fields as ``options`` (:func:`settings_json`). A body that can only
    build it after a check of its own sets ``session.settings`` instead.
    """
    code = 0
    session = Session(command, common, writes_records=writes_records, settings=settings)
    try:
        interrupts.install_interrupt_handler()
        if not common.debug:
            io.quiet_libraries()
        success = False
        try:
            common.validate()
            session.open()
            body(session)
            success = True
        except KeyboardInterrupt:
            session.interrupted = True
            raise
        except Exception:
            if not interrupts.interrupt_seen():
                raise
            # A Ctrl-C that a library re-raised as another error is still a Ctrl-C.
            session.interrupted = True
            raise KeyboardInterrupt from None
        finally:
            session.close(success)
        session.finish()
    except BrokenPipeError:
        # The reader went away (`dasd ... | head`): not an error, and nothing to say.
        io.silence_stdout_at_fd_level()
        code = 0
    except KeyboardInterrupt:
        try:
            session.finish()
        except Exception:  # noqa: BLE001 - the interrupt is what matters now
            pass
        code = interrupts.interrupt_exit_code()
    except DasdError as err:
        _print_error(err.render(command), common.debug)
        code = err.exit_code
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no locals dumped
        _print_error(f"dasd {command}: error: internal error: {type(exc).__name__}: {exc}"
                     + ("" if common.debug else "\n  hint: rerun with --debug for a traceback"),
                     common.debug)
        code = 1
    if code:
        raise typer.Exit(code)


def settings_json(settings: Any) -> dict[str, Any]:
    """A settings dataclass as --stats' ``options``: one key per field, named as the field
    (without the trailing underscore of a name like ``continue_``); sets become sorted
    lists, paths and enum members their text, nested dataclasses objects."""
    return {f.name.rstrip("_"): _plain(getattr(settings, f.name)) for f in fields(settings)}


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return settings_json(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def _print_error(text: str, debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    try:
        io.say(text)
    except BrokenPipeError:  # stderr closed too: nothing more to do
        pass


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` (K counts from 0) into (K, N)."""
    if value is None:
        return None
    try:
        k_text, n_text = value.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard must look like K/N (e.g. 0/4), not {value!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {value}: need 0 <= K < N")
    return k, n
