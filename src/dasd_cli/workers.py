"""An ordered, bounded map over worker processes, for per-record work that needs every core.

``ordered_map(fn, chunks, workers=N)`` yields ``(chunk, fn(chunk))`` for every chunk in
input order (the chunk too, so the caller can report on it). At most ``window`` chunks
are in flight, so memory stays bounded however long the input
(``multiprocessing.Pool.imap`` would read the whole input ahead). Workers are
started with ``spawn`` (no fork of a process whose tokenizer threads already ran) and
set up once by ``initializer(*initargs)``. With ``workers <= 1`` everything runs in
this process, initializer included, with no pool at all.

``ordered_thread_map`` is the same contract over threads, for work that mostly waits on
other processes (``dasd eval``'s code tests in the sandbox).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), as ``itertools.batched``."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(fn: Callable[[T], R], chunks: Iterable[T], *, workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                window: int | None = None) -> Iterator[tuple[T, R]]:
    """``(chunk, fn(chunk))`` for each chunk, in order, computed by ``workers`` processes."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for chunk in chunks:
            yield chunk, fn(chunk)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer,
                             initargs=initargs) as pool:
        yield from _in_order(pool, fn, chunks, window or 2 * workers)


def ordered_thread_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                       window: int | None = None) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in input order, computed by ``workers`` threads.

    For work that waits on other processes (code tests in the sandbox, math comparisons
    in their helper process), where threads are enough. At most ``window`` items are in
    flight. With ``workers <= 1`` it runs in this thread, so ``fn`` sees the main thread.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dasd-worker")
    try:
        yield from _in_order(pool, fn, items, window or 4 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int
              ) -> Iterator[tuple[T, R]]:
    """Submit ``items`` to ``pool`` with at most ``window`` in flight; results in order."""
    pending: collections.deque[tuple[T, Future[R]]] = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()
