"""Handlers in a supervised child process: a hard stop that needs no help from the handler.

A handler runs model code that may never look at its cancel token (a diffusers call at 4096 px
is one opaque step of minutes), allocate without bound, or die in native code (``terminate
called without an active exception``). In a thread of the worker, such a handler can only be
abandoned, and takes the worker process with it. So the worker (the *parent*) runs its handlers
in one long-lived child process, as Cog runs a predictor: the child builds the handlers, input
fetcher and model cache once and keeps them warm from task to task; the parent sends it one task
at a time over a pipe and gets back progress and the handler's result (the outputs' bytes) or
its error. The parent keeps everything else: Kafka, statuses, storage, commits. It decides
every status; the child only runs handlers.

The parent kills the child (SIGKILL, which no handler can ignore) when

* the task's cancel token is set (time limit, user cancel, shutdown) and the child has not
  answered within that reason's grace (``timeout_grace_s`` after the time limit,
  ``cancel_grace_s`` after a user cancel or a shutdown);
* the child's resident memory (``/proc/<pid>/statm``, polled with every pipe poll) crosses
  ``max_rss_bytes``: a ceiling that needs no cgroup and, unlike ``RLIMIT_AS``, does not trip
  over the address space that CUDA and BLAS reserve without using;

and a child that exits by itself counts the same. Each raises :class:`HardStop` in the parent,
and a fresh child is started at once, so the next task finds one warming up (its models load
again on first use). Children are started with ``spawn``: never a fork of a process that holds
Kafka clients and threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gpu_consumers import errors
from gpu_consumers.control import CancelReason, ReasonToken
from gpu_consumers.errors import ProviderError, TaskCancelled, TaskFailure
from gpu_consumers.handlers.base import CancelToken, HandlerResult, TaskContext
from gpu_consumers.handlers.handler_set import HandlerFactory, HandlerSet, Providers
from schemas.enums import TaskType
from schemas.events import TaskSubmitted

if TYPE_CHECKING:
    from gpu_consumers.inputs import InputFetcher
    from gpu_consumers.model_cache import ModelCache

log = logging.getLogger("gpu_consumers.worker")

_POLL_S = 0.1  # how often the parent looks at the pipe, the token and the child's memory
_REAP_S = 10.0  # wait for a killed child to be reaped (SIGKILL cannot be refused)
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ChildKit:
    """What the child builds once and runs every task with. Made in the parent from objects it
    already has, it is pickled to the child: classes and module-level functions as handler
    factories, nothing holding a lock or a socket."""

    handlers: Mapping[TaskType, HandlerFactory | Providers]
    fetcher: InputFetcher | None = None
    models: ModelCache | None = None
    device: str = "cpu"


class HardStop(Exception):
    """The child was killed or died while running the task; ``why`` is ``cancel`` (it did not
    stop within the grace after its token was set), ``memory`` or ``died``."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


class ChildOutOfMemory(Exception):
    """The handler raised torch's CUDA out-of-memory error in the child."""


class ChildError(Exception):
    """Any other exception of the handler, as its message; ``type_name`` its type's name (the
    traceback is in the handler process's log)."""


# --------------------------------------------------------------------------- the child


def _describe(exc: BaseException) -> tuple[str, str, str]:
    """A picklable (kind, name, message) of a handler's exception."""
    name, message = type(exc).__name__, str(exc)
    if isinstance(exc, TaskFailure):  # as its nearest class of gpu_consumers.errors: its code
        typed = next(c for c in type(exc).__mro__ if getattr(errors, c.__name__, None) is c)
        return "failure", typed.__name__, message
    if isinstance(exc, TaskCancelled):
        return "cancelled", name, message
    if "OutOfMemoryError" in name and "torch" in type(exc).__module__:
        return "oom", name, message
    # The traceback goes to the log, not to the task's error message (server paths).
    log.error("handler raised %s", name, exc_info=exc)
    return "other", name, message


def free_gpu_cache() -> None:
    """``torch.cuda.empty_cache()`` in this process, if it uses torch (never imports it)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        log.exception("torch.cuda.empty_cache() failed")


class _ChildProgress:
    """The handler's progress callback in the child: a report at most every ``every_s``. Each
    one wakes the parent (a pipe read, on the CPUs the handler runs on), which emits at most one
    event per its progress interval, twice ``every_s``: a quick task's reports would all be
    dropped there, so they are not sent."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], every_s: float) -> None:
        self._send, self._every_s = send, every_s
        self._sent_at = time.monotonic()

    def __call__(self, value: float) -> None:
        now = time.monotonic()
        if now - self._sent_at < self._every_s:
            return
        try:
            self._send(("progress", float(value)))
        except (TypeError, ValueError):
            return
        self._sent_at = now


def _child_main(conn: Connection, build: Callable[[], ChildKit], log_level: int,
                progress_every_s: float) -> None:
    """The child: build the kit, then run the tasks the parent sends, one at a time, reporting
    their progress at most every ``progress_every_s``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [handlers] %(message)s")
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(msg)

    kit = build()
    handlers = HandlerSet(kit.handlers)
    inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
    current: list[CancelToken | None] = [None]

    def read() -> None:
        """Cancels must reach the token while the main thread is inside the handler."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone: nothing may outlive it
            if msg[0] == "cancel":
                token = current[0]
                if token is not None:
                    token.cancel()
                continue
            if msg[0] == "run":  # the token exists before any cancel of this task can arrive
                current[0] = CancelToken()
                msg = (*msg, current[0])
            inbox.put(msg)

    threading.Thread(target=read, name="child-pipe", daemon=True).start()
    send(("ready", os.getpid()))
    while (msg := inbox.get())[0] == "run":
        _, task, attempt, low_memory, token = msg
        progress = _ChildProgress(send, progress_every_s)
        # The task reads inputs only as its tenant may (gpu_consumers.input_scope).
        fetch = kit.fetcher and kit.fetcher.for_task(task.envelope.origin_tenant_id)
        ctx = TaskContext(task_id=task.envelope.task_id, attempt=attempt, progress=progress,
                          cancel=token, fetch=fetch, models=kit.models, device=kit.device,
                          low_memory=low_memory)
        try:
            result = handlers.for_task(task).run(task.params, ctx)
            reply: tuple[Any, ...] = ("ok", result)
        except BaseException as exc:  # every outcome goes back to the parent, which decides
            reply = ("error", *_describe(exc))
            del exc
            if reply[1] == "oom":  # the frames holding the tensors are gone: free the cache
                free_gpu_cache()
        try:
            send(reply)
        except Exception as exc:  # e.g. a result that cannot be pickled
            send(("error", "other", type(exc).__name__, f"the result cannot be sent: {exc}"))


# --------------------------------------------------------------------------- the parent


def _rebuild(kind: str, name: str, message: str) -> BaseException:
    if kind == "failure":
        return getattr(errors, name)(message)
    if kind == "cancelled":
        return TaskCancelled(message)
    if kind == "oom":
        return ChildOutOfMemory(message)
    err = ChildError(message)
    err.type_name = name  # type: ignore[attr-defined]
    return err


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class Supervisor:
    """The parent's side: one child at a time, replaced after every hard stop. ``run`` is
    called from one thread at a time (the worker's handler thread)."""

    def __init__(self, build: Callable[[], ChildKit], *, timeout_grace_s: float,
                 cancel_grace_s: float, max_rss_bytes: int, start_timeout_s: float,
                 progress_interval_s: float = 0.0) -> None:
        """``progress_interval_s``: the least time between two progress events the parent
        emits; the child reports at twice that rate, so no report the parent would use is
        missing (and none is older than half of it), and a quick task's go unsent."""
        self._build = build
        self._progress_every_s = progress_interval_s / 2
        self._grace = {CancelReason.TIMEOUT: timeout_grace_s}
        self._cancel_grace_s = cancel_grace_s
        self._max_rss = max_rss_bytes
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._ready = False
        self.started = 0  # children started (for logs and tests)
        self.killed = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start a child unless one is running (it warms up while the parent goes on)."""
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                return
            self._discard()
            ctx = multiprocessing.get_context("spawn")
            parent_end, child_end = ctx.Pipe()
            level = logging.getLogger().getEffectiveLevel()
            proc = ctx.Process(target=_child_main,
                               args=(child_end, self._build, level, self._progress_every_s),
                               name="worker-handlers", daemon=True)
            proc.start()
            child_end.close()
            self._proc, self._conn, self._ready = proc, parent_end, False
            self.started += 1
            log.info("handler process %d started", proc.pid)

    def ready(self) -> None:
        """Block until the child has built its kit; ProviderError if it cannot."""
        self.start()
        if self._ready:
            return
        assert self._conn is not None
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._conn.poll(_POLL_S):
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "ready":
                    self._ready = True
                    return
            elif not self._proc.is_alive():
                break
        proc = self._proc
        self._kill()
        raise ProviderError(f"the handler process did not start ({_exit_text(proc.exitcode)}); "
                            f"see the worker's log")

    def run(self, task: TaskSubmitted, attempt: int, low_memory: bool, token: ReasonToken,
            progress: Callable[[float], None]) -> HandlerResult:
        """The handler's result, or its exception, or :class:`HardStop`."""
        self.ready()
        conn = self._conn
        assert conn is not None
        conn.send(("run", task, attempt, low_memory))
        cancelled_at: float | None = None
        while True:
            if token.cancelled and cancelled_at is None:
                cancelled_at = time.monotonic()
                conn.send(("cancel",))
            if cancelled_at is not None:
                grace = self._grace.get(token.reason, self._cancel_grace_s)  # type: ignore[arg-type]
                if time.monotonic() - cancelled_at > grace:
                    self._kill(replace=token.reason is not CancelReason.SHUTDOWN)
                    raise HardStop("cancel", f"did not stop within {grace:g}s of its "
                                   f"{token.reason} cancel; its process was killed")
            rss = self._rss()
            if self._max_rss and rss > self._max_rss:
                self._kill()
                raise HardStop("memory", f"used {rss / 2**20:,.0f} MiB, over the worker's memory "
                               f"ceiling of {self._max_rss / 2**20:,.0f} MiB; its process was killed")
            try:
                if not conn.poll(_POLL_S):
                    if not self._proc.is_alive():
                        raise EOFError
                    continue
                msg = conn.recv()
            except (EOFError, OSError):
                proc = self._proc
                self._kill()  # reaps it: its exit code is known after this
                raise HardStop("died", f"its process died ({_exit_text(proc.exitcode)})") from None
            if msg[0] == "progress":
                progress(msg[1])
            elif msg[0] == "ok":
                return msg[1]
            elif msg[0] == "error":
                raise _rebuild(*msg[1:])

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within the cancel grace."""
        with self._lock:
            proc, conn = self._proc, self._conn
            if proc is None:
                return
            try:
                if conn is not None:
                    conn.send(("exit",))
            except (OSError, ValueError):
                pass
            proc.join(self._cancel_grace_s)
        self._kill(replace=False)

    # ---- helpers ---------------------------------------------------------------------------

    def _rss(self) -> int:
        try:
            with open(f"/proc/{self._proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return 0  # gone already: the pipe tells

    def _kill(self, replace: bool = True) -> None:
        """SIGKILL the child, reap it, and (``replace``) start the next one at once."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.is_alive():
                self.killed += 1
                log.warning("killing handler process %d", proc.pid)
                proc.kill()
            self._discard()
        if replace:
            self.start()

    def _discard(self) -> None:
        if self._proc is not None:
            self._proc.join(_REAP_S)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self._ready = False
