"""The ``dasd`` command: registers the subcommands, nothing else."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dasd_cli import __version__, interrupts, io
from dasd_cli.commands.eval import eval_command
from dasd_cli.commands.filter import filter_command
from dasd_cli.commands.import_ import import_command
from dasd_cli.commands.mix import mix_command
from dasd_cli.commands.pack import pack_command
from dasd_cli.commands.sample import sample_command
from dasd_cli.commands.score import score_command
from dasd_cli.commands.train import train_command

io.quiet_spawned_process()  # a library's worker process started from a quiet command

app = typer.Typer(
    name="dasd",
    help="Distribution-Aligned Sequence Distillation over compressed JSONL: "
    "sample (or import) | filter | score | mix | pack -> train; eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"dasd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Distribution-Aligned Sequence Distillation over compressed JSONL."""


app.command("eval")(eval_command)
app.command("filter")(filter_command)
app.command("import")(import_command)
app.command("mix")(mix_command)
app.command("pack")(pack_command)
app.command("sample")(sample_command)
app.command("score")(score_command)
app.command("train")(train_command)


def main() -> None:
    """Console entry point."""
    interrupts.install_interrupt_handler()
    io.claim_stdout()
    io.route_library_logging_to_stderr()
    try:
        app(prog_name="dasd")
    except BrokenPipeError:
        io.silence_stdout_at_fd_level()
        sys.exit(0)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before a command's own loop took over
        sys.exit(interrupts.interrupt_exit_code())
    except SystemExit:
        if interrupts.interrupt_seen():  # click turns an early interrupt into its own exit status
            sys.exit(interrupts.interrupt_exit_code())
        raise


if __name__ == "__main__":
    main()
