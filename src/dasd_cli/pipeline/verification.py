"""Runners the verifiers need, which core may not start itself.

- code tests: :func:`dasd_cli.sandbox.run_python` (re-exported here as ``run_program``);
- math comparisons off the main thread (``--workers``): :func:`compare_in_helper`, a helper
  process per thread, killed and replaced when a comparison overruns its time limit
  (math-verify's own SIGALRM guard works only on the main thread).
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from dasd_cli.core.verify.answers import ComparisonTimeout, compare
from dasd_cli.io.terminal import quiet_math_verify
from dasd_cli.sandbox import run_python as run_program

__all__ = ["compare_in_helper", "run_program"]


def compare_in_helper(gold: str, predicted: str, timeout_s: int) -> bool:
    """math-verify's verdict computed in this thread's helper process within ``timeout_s``."""
    return _worker().compare(gold, predicted, timeout_s)


_local = threading.local()


def _worker() -> _CompareWorker:
    worker = getattr(_local, "worker", None)
    if worker is None:
        worker = _local.worker = _CompareWorker()
    return worker


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the helper process
    quiet_math_verify()
    while True:
        try:
            gold, predicted = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", compare(gold, predicted, None)))
        except Exception as exc:  # noqa: BLE001 - a parse failure is a non-match, not a crash
            conn.send(("error", repr(exc)))


class _CompareWorker:
    """One helper process that compares answers; replaced when a comparison overruns."""

    def __init__(self) -> None:
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._warm = False  # a comparison has come back (the helper's start is paid for)

    @staticmethod
    def _start() -> tuple[BaseProcess, Connection]:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")  # never fork a threaded parent
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def compare(self, gold: str, predicted: str, timeout_s: int) -> bool:
        if self._proc is None or self._conn is None or not self._proc.is_alive():
            self._proc, self._conn = self._start()
        proc, conn = self._proc, self._conn
        conn.send((gold, predicted))
        # The first call also pays for the helper's start and its sympy import.
        if not conn.poll(timeout_s + 30 if not self._warm else timeout_s):
            proc.kill()
            proc.join()
            self._proc = None
            raise ComparisonTimeout(f"math comparison took over {timeout_s} s")
        self._warm = True
        status, value = conn.recv()
        return bool(value) if status == "ok" else False
