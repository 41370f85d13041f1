"""What a person sees: one-line messages, progress and library logs on stderr; a view
asked for in place of records (``dasd score --explain``) on stdout."""

from __future__ import annotations

import os
import sys
from typing import Any

from dasd_cli.io.write import records_stream


def stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def stdout_is_terminal() -> bool:
    """Whether what a command writes to stdout reaches a terminal (not a pipe or file)."""
    try:
        return records_stream().isatty()
    except (ValueError, OSError):
        return False


def show(text: str) -> None:
    """A view the user asked for (``dasd score --explain``), on stdout: where a pager or
    ``| head`` reads. Only for runs that write no records to stdout."""
    stream = records_stream()
    stream.write(text.encode("utf-8") if text.endswith("\n") else (text + "\n").encode("utf-8"))
    stream.flush()


def say(text: str) -> None:
    """One line for the human, on stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def progress(quiet: bool, transient: bool = True) -> Any:
    """A rich progress display on stderr when it is a terminal and not --quiet, else None."""
    if quiet or not stderr_is_terminal():
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


def silence_stdout_at_fd_level() -> None:
    """After a broken pipe: point fd 1 at /dev/null so interpreter exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, records_stream().fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def route_library_logging_to_stderr() -> None:
    """vLLM, DeepSpeed and friends log to stdout by default; stdout is for records."""
    import logging

    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("vllm", "deepspeed", "DeepSpeed", "transformers", "torch"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)  # type: ignore[attr-defined]


_DISTRIBUTED_DEPRECATION = r"`torch\.distributed\."  # "`torch.distributed.X` is deprecated ..."
# The same filters for the Python processes the libraries start (vLLM's engine core and
# workers, multiprocessing's resource tracker), as PYTHONWARNINGS entries: message prefix.
_LIBRARY_PROCESS_WARNINGS = ("ignore:`torch.distributed.:FutureWarning",
                             "ignore:resource_tracker:UserWarning")


_QUIET_MARK = "DASD_QUIET_LIBRARIES"


def quiet_spawned_process() -> None:
    """quiet_libraries() in a process that multiprocessing spawned from a quiet dasd
    command (vLLM's engine core and workers on CPU). Such a process imports the spawning
    process's main module, and so dasd_cli.cli, before the code it runs: the cli calls
    this at import, so vLLM's import-time warnings there ("Triton is installed, but
    doesn't include CPU backend") go by the same levels."""
    import multiprocessing

    if os.environ.get(_QUIET_MARK) and multiprocessing.current_process().name != "MainProcess":
        quiet_libraries()


class _ErrorsOnly:
    """A logging filter that lets only errors through."""

    @staticmethod
    def filter(record: Any) -> bool:
        import logging

        return record.levelno >= logging.ERROR


def quiet_math_verify() -> None:
    """math-verify logs a warning per disabled timeout and at ERROR per timed-out parse;
    stderr belongs to dasd's summary, and timeouts are reported as verdicts. (Also called
    in the helper processes that compare math answers.)"""
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


def quiet_libraries() -> None:
    """Keep library chatter off stderr (what --debug lets through): DeepSpeed's logger
    (its "Setting accelerator to CPU" warning, logged while it is imported), transformers'
    warnings, math-verify's timeout logs, vLLM's logging in each of its engine's processes,
    torch's C++ notes (vLLM's NUMA binding), torch.distributed's FutureWarnings, the
    resource tracker's report of the shared memory vLLM leaves at exit, and the tqdm bars
    of transformers, huggingface_hub, GGUF conversion and vLLM's checkpoint loading
    (backends/vllm.py follows TQDM_DISABLE).
    Errors still show. Call before the libraries are imported; a variable the user set
    is left alone: the variables reach the processes the libraries start."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # every tqdm bar; dasd draws its own with rich
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10's "[W ...] Warning:" lines
    os.environ.setdefault("PYTHONWARNINGS", ",".join(_LIBRARY_PROCESS_WARNINGS))
    os.environ[_QUIET_MARK] = "1"  # for quiet_spawned_process()
    # vLLM sets its logger's level from VLLM_LOGGING_LEVEL only once it configures logging;
    # what it logs while being imported goes by this level.
    logging.getLogger("vllm").setLevel(logging.ERROR)
    quiet_math_verify()
    # DeepSpeed resets its logger's level and handlers when imported; a filter survives that.
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ErrorsOnly) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_ErrorsOnly())
    # torch.distributed's deprecation notices, raised from the collectives DeepSpeed calls
    # on every step (and from vLLM's kernel registry), are meant for the library's authors.
    warnings.filterwarnings("ignore", message=_DISTRIBUTED_DEPRECATION, category=FutureWarning)
    if "transformers.utils.logging" in sys.modules:  # imported already: the variables are read
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
