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
    warnings, math-verify's timeout logs, torch.distributed's FutureWarnings, and the tqdm
    bars of transformers, huggingface_hub and GGUF conversion.
    Errors still show. Call before the libraries are imported; a variable the user set
    is left alone."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # every tqdm bar; dasd draws its own with rich
    # DeepSpeed resets its logger's level and handlers when imported; a filter survives that.
    quiet_math_verify()
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ErrorsOnly) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_ErrorsOnly())
    # torch.distributed's deprecation notices, raised from the collectives DeepSpeed calls
    # on every step, are meant for the library's authors; matched by the module raising them.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed(\.|$)")
    if "transformers.utils.logging" in sys.modules:  # imported already: the variables are read
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
