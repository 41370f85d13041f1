"""The record loop of the commands that decide every input record once.

filter, eval, score, import, mix and pack read records, work out what to do with each
(``decide``: checks, verification, a forward pass, tokenizing), and then keep, drop or
skip each one through their session (``settle``), in input order. :func:`record_loop`
is that loop, written once:

- ``decide`` runs on each batch of items: in this thread, in ``workers`` threads (work
  that waits on other processes: the code sandbox, math comparisons), or in ``workers``
  processes (work that needs the interpreter: parsing and tokenizing). At most a bounded
  window of batches is in flight (:mod:`dasd_cli.workers`);
- ``settle`` sees every item with its outcome in this thread, in input order; mix and
  pack only hold the item there and decide it in ``finish``, their final pass over all of
  the input.

Counting (DESIGN.md "Errors and exit codes"): read = kept + dropped + skipped, also when
Ctrl-C or SIGTERM stops a run. Records already counted as read but not yet decided at
that moment (read ahead for the workers, or held for the final pass) are taken out of
``read`` and counted as ``undecided`` instead, so the summary of an interrupted run
counts exactly the records whose fate it reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, TypeVar, overload

from dasd_cli import interrupts
from dasd_cli.core.tally import Tally
from dasd_cli.workers import ordered_map, ordered_thread_map

T = TypeVar("T")
R = TypeVar("R")


@overload
def record_loop(tally: Tally, batches: Iterable[list[T]], settle: Callable[[T, R], None],
                decide: Callable[[list[T]], Sequence[R]], *, workers: int = 1,
                processes: bool = False, initializer: Callable[..., None] | None = None,
                initargs: tuple[object, ...] = (), finish: Callable[[], None] | None = None) -> None: ...


@overload
def record_loop(tally: Tally, batches: Iterable[list[T]], settle: Callable[[T, None], None],
                decide: None = None, *, workers: int = 1,
                processes: bool = False, initializer: Callable[..., None] | None = None,
                initargs: tuple[object, ...] = (), finish: Callable[[], None] | None = None) -> None: ...


def record_loop(tally: Tally, batches: Iterable[list[T]], settle: Callable[[T, Any], None],
                decide: Callable[[list[T]], Sequence[Any]] | None = None, *, workers: int = 1,
                processes: bool = False, initializer: Callable[..., None] | None = None,
                initargs: tuple[object, ...] = (), finish: Callable[[], None] | None = None) -> None:
    """Decide every batch, settle every item in input order, then ``finish``.

    ``decide(batch)`` returns one outcome per item (without ``decide``, ``settle`` gets
    None and does the work itself, in order). It runs here with ``workers <= 1``, else in
    ``workers`` threads, or processes with ``processes`` (set up by
    ``initializer(*initargs)``; ``decide`` must then pickle: a module-level function or a
    partial of one).
    ``tally`` is the session's: an interrupt takes its undecided records out of ``read``.
    """
    try:
        for batch, outcomes in _decided(batches, decide, workers, processes, initializer, initargs):
            for item, outcome in zip(batch, outcomes):
                settle(item, outcome)
        if finish is not None:
            finish()
    except BaseException as exc:
        # A Ctrl-C a library turned into another error is still a Ctrl-C (run_command).
        if isinstance(exc, KeyboardInterrupt) or interrupts.interrupt_seen():
            uncount_undecided(tally)
        raise


def _decided(batches: Iterable[list[T]], decide: Callable[[list[T]], Sequence[R]] | None,
             workers: int, processes: bool, initializer: Callable[..., None] | None,
             initargs: tuple[object, ...]) -> Iterator[tuple[list[T], Sequence[Optional[R]]]]:
    if decide is None:
        return ((batch, [None] * len(batch)) for batch in batches)
    if processes:
        return ordered_map(decide, batches, workers=workers, initializer=initializer, initargs=initargs)
    return ordered_thread_map(decide, batches, workers=workers)


def uncount_undecided(tally: Tally) -> None:
    """Take the records read but neither kept, dropped nor skipped out of ``read``, into
    ``undecided`` (the summary of a stopped run)."""
    undecided = tally.read - tally.kept - tally.dropped_total - tally.skipped_total
    if undecided > 0:
        tally.read -= undecided
        tally.extra["undecided"] = undecided
