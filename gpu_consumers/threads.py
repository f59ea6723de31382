"""Threads kept from one task to the next.

A worker runs each task, and within it each handler call, in a thread of its own, so that it can
give up on one that hangs (a shutdown past its grace, a handler ignoring its cancel token).
Starting a new OS thread for each was on every task's path twice: ``Thread.start`` waits until
the new thread has been scheduled, ~0.1 ms on an idle machine and milliseconds on a busy one
(bench/bench_api_latency.py). A :class:`ReusableThread` runs one call at a time in a long-lived
daemon thread instead, and starts a fresh thread only when the previous call is still running,
i.e. was given up on: the stuck thread is then left to itself, and ends if its call
ever returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class Call:
    """One call handed to a :class:`ReusableThread`: its result or the exception it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed_s = 0.0
        self._fn = fn
        self._done = threading.Event()

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once the call has returned or raised (within ``timeout_s``; None: no limit)."""
        return self._done.wait(None if timeout_s is None else max(timeout_s, 0.0))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            self.result = self._fn()
        except BaseException as exc:  # reported to whoever waits, never lost
            self.error = exc
        finally:
            self.elapsed_s = time.perf_counter() - start
            self._fn = None  # what it closed over goes with the call, not with the thread
            self._done.set()


def _serve(calls: queue.SimpleQueue[Call | None]) -> None:
    while (call := calls.get()) is not None:
        call._run()


class ReusableThread:
    """Runs calls one after another in a daemon thread kept between them. Thread-safe."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[Call | None] | None = None
        self._last: Call | None = None

    def submit(self, fn: Callable[[], Any]) -> Call:
        """Start ``fn`` now, in the kept thread, or in a new one if the last call is still
        running (it was given up on: nothing may wait behind it)."""
        call = Call(fn)
        with self._lock:
            if self._calls is None or (self._last is not None and not self._last.done):
                if self._calls is not None:
                    self._calls.put(None)  # the stuck thread ends once its call returns, if ever
                self._calls = queue.SimpleQueue()
                threading.Thread(target=_serve, args=(self._calls,), name=self._name,
                                 daemon=True).start()
            self._last = call
            self._calls.put(call)
        return call

    def close(self) -> None:
        """Let the thread end after its current call (a later submit starts a new one)."""
        with self._lock:
            if self._calls is not None:
                self._calls.put(None)
                self._calls = self._last = None
