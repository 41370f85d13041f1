"""How a command ends when asked to: Ctrl-C (SIGINT) and a scheduler's stop (SIGTERM).

Both raise KeyboardInterrupt in the main thread, except while a record is being written
(inside ``critical``): then the interrupt waits until the write is complete, so stdout
always ends on a whole record. The exit status is 128 + the signal number (130, 143).
"""

from __future__ import annotations

import signal
from typing import Any

_interrupt_pending = False
_interrupt_signal: int | None = None  # SIGINT or SIGTERM, once one arrived
_in_critical = 0


def _on_interrupt(signum: int, frame: Any) -> None:
    global _interrupt_pending, _interrupt_signal
    _interrupt_signal = signum
    if _in_critical:
        _interrupt_pending = True  # raised once the write in progress is complete
        return
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Ctrl-C and SIGTERM (a scheduler's stop, `timeout`) both end a command the same way:
    deferred while a record is being written, so output stays whole and ``-o`` temp files
    are removed."""
    if _is_main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
        signal.signal(signal.SIGTERM, _on_interrupt)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def interrupt_exit_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (128 + the signal number)."""
    return 128 + (_interrupt_signal or signal.SIGINT)


def interrupt_seen() -> bool:
    """Whether Ctrl-C or SIGTERM arrived, even if a library turned the KeyboardInterrupt into another
    error (transformers' lazy imports re-raise it as ModuleNotFoundError)."""
    return _interrupt_signal is not None


def check_interrupt() -> None:
    global _interrupt_pending
    if _interrupt_pending and not _in_critical:
        _interrupt_pending = False
        raise KeyboardInterrupt


class _Critical:
    def __enter__(self) -> None:
        global _in_critical
        _in_critical += 1

    def __exit__(self, *exc: Any) -> None:
        global _in_critical
        _in_critical -= 1


critical = _Critical()
