"""Running one task record to its end: attempts, time limit, retries, cancel, outputs, statuses.

:class:`TaskRun.execute` runs in the worker's task thread and walks the same stages for every
attempt: PROCESSING -> content policy -> the handler in its own thread under the time limit ->
store the outputs -> COMPLETED. On a typed failure the retry policy (``state.retry.decide``)
picks a retry -- QUEUED for attempt ``n + 1`` carrying the error, then that attempt after the
backoff (its own ``attempt`` in the envelope) -- or FAILED, which is final. The worker's main
thread never waits on a handler: it keeps polling Kafka and commits what ``execute`` reports.

Errors never vanish: a ``TaskFailure`` keeps its code; a time limit is PROVIDER_TIMEOUT; a GPU
out-of-memory frees the CUDA cache and runs once more with ``ctx.low_memory`` (same attempt),
then is PROVIDER_ERROR; any other exception is PROVIDER_ERROR with its message.

Cancel reasons (``gpu_consumers.control``): a *user* cancel ends CANCELLED and deletes what the
attempt stored, even when the handler had finished; a *shutdown* aborts without a terminal
status (a finished result is still stored and reported: the final write is shielded); a
*timeout* only ends the attempt.

Supervised execution (the default, ``gpu_consumers.supervisor``): the handler runs in the
worker's child process, and a handler that ignores its token past the grace (``timeout_grace_s``
after the time limit, ``cancel_grace_s`` after a user cancel or a shutdown), crosses the memory
ceiling, or dies, is killed with its process; the worker stays healthy and a fresh child takes
the next attempt. Inline execution (tests, benchmarks): a handler that ignores its token past
``timeout_grace_s`` can only be abandoned: the attempt fails with PROVIDER_TIMEOUT, no retry runs
in this process (the retry is handed back to the group) and the run reports the worker
unhealthy.

Either way such an attempt is a *worker stop* (``state.stops``): its FAILED (or the retry's
QUEUED) carries the deterministic stop event id, the run counts it with the stops the task
record's header reports, and the second stop ends the task FAILED/PROVIDER_ERROR ("the task
stopped a worker twice").
Before any of this, a task over its type's admission budget is FAILED/INVALID_INPUT.

Provider routes (``gpu_consumers.providers``, ``WORKER_PROVIDERS``): where the task's type has
one, the attempt runs on the primary provider, or on the fallback when the task is over the
primary's capabilities (over both: INVALID_INPUT) or the primary failed with PROVIDER_ERROR,
PROVIDER_TIMEOUT or a GPU out of memory -- at once, within the same attempt; the result's
metadata names the provider.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gpu_consumers.admission import check_admission
from gpu_consumers.control import CancelReason, ReasonToken
from gpu_consumers.emitter import Ack, Emitter
from gpu_consumers.errors import (
    ContentPolicyViolation,
    ProviderError,
    ProviderTimeout,
    StorageFailure,
    TaskCancelled,
    TaskFailure,
)
from gpu_consumers.fault_points import fault_point
from gpu_consumers.handlers.base import Handler, HandlerResult, TaskContext
from gpu_consumers.providers import ProviderRouter
from gpu_consumers.settings import ContentPolicy, WorkerSettings
from gpu_consumers.storage import OutputStore
from gpu_consumers.supervisor import ChildOutOfMemory, HardStop, Supervisor, free_gpu_cache
from gpu_consumers.threads import Call, ReusableThread
from schemas.enums import TaskStatus
from schemas.events import ResultMetadata, TaskError, TaskResult, TaskSubmitted
from schemas.headers import trace_id_of
from state.lifecycle import TaskState, check_new_attempt, fold
from state.retry import RetryDecision, decide
from state.stops import STOPS_HEADER, decide_after_stop, worker_stop_event_id

if TYPE_CHECKING:
    from gpu_consumers.inputs import InputFetcher
    from gpu_consumers.model_cache import ModelCache

log = logging.getLogger("gpu_consumers.worker")

# Supervised: how long past the grace a killed child may take to be reaped and reported.
_KILL_ALLOWANCE_S = 15.0


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"  # shutdown: no terminal status of this worker's making


@dataclass
class RunReport:
    outcome: Outcome
    commit: bool  # the record is finished (terminal status or hand-back acknowledged)
    retried: int = 0
    healthy: bool = True  # False: a handler ignored its cancel token, or the broker did not ack


@dataclass
class Services:
    """What every run of one worker shares."""

    settings: WorkerSettings
    emitter: Emitter
    store: OutputStore
    fetcher: InputFetcher  # each task gets its for_task() view
    models: ModelCache
    device: str
    handler_for: Callable[[TaskSubmitted], Handler]
    content_policy: ContentPolicy | None = None
    supervisor: Supervisor | None = None  # None: inline execution
    providers: ProviderRouter | None = None  # per-type primary / fallback providers, if any
    # Handler calls run here, one at a time, so that a run can give up on one that hangs.
    handler_thread: ReusableThread = field(default_factory=lambda: ReusableThread("handler"))


class _Stop(Exception):
    """Internal: a user cancel or a shutdown ends the run."""

    def __init__(self, reason: CancelReason) -> None:
        self.reason = reason


class _Progress:
    """The handler's progress callback: increasing values only, at most one event per interval."""

    def __init__(self, emit: Callable[[float], None], interval_s: float) -> None:
        self._emit, self._interval_s = emit, interval_s
        self._lock = threading.Lock()
        self._last = 0.0
        self._last_at = time.monotonic()  # the attempt's PROCESSING event counts
        self.closed = False

    def __call__(self, fraction: float) -> None:
        try:
            value = min(max(float(fraction), 0.0), 1.0)  # NaN fails the > test below
        except (TypeError, ValueError):
            return
        now = time.monotonic()
        with self._lock:
            if self.closed or not value > self._last or now - self._last_at < self._interval_s:
                return
            self._last, self._last_at = value, now
        try:
            self._emit(value)
        except Exception:  # progress is best effort; never fail the task over it
            log.exception("progress event not produced")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, ChildOutOfMemory):
        return True
    torch = sys.modules.get("torch")  # only handlers import torch; the runtime never does
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def retry_message(decision: RetryDecision, now: datetime) -> str:
    """The QUEUED message of a retry: why, and when the next attempt starts (UTC)."""
    due = now + timedelta(seconds=decision.delay_s)
    return f"{decision.reason}; runs at {due.isoformat(timespec='milliseconds')}"


def build_result(result: HandlerResult, urls: list[str], timing_ms: int) -> TaskResult:
    """The COMPLETED event's result from a handler's result and its stored outputs' URLs."""
    def first(kind: str) -> str | None:
        pairs = zip(urls, result.outputs)
        return next((url for url, out in pairs if out.content_type.startswith(kind)), None)

    metadata = ResultMetadata(
        model=result.model, provider=result.provider, timing_ms=timing_ms, width=result.width,
        height=result.height, fps=result.fps, frame_count=result.frame_count,
        duration=result.duration_s,
        content_type=result.outputs[0].content_type if result.outputs else "text/plain")
    return TaskResult(result_image_url=first("image/"), result_video_url=first("video/"),
                      result_text=result.text, output_urls=urls, seed=result.seed,
                      metadata=metadata)


class TaskRun:
    """One task record, from its first attempt to a terminal status (or an abort)."""

    def __init__(self, task: TaskSubmitted, traceparent: str | None, services: Services,
                 stops: int = 0) -> None:
        self.task, self.task_id = task, task.envelope.task_id
        self._tenant_id = task.envelope.origin_tenant_id  # scopes its inputs and its outputs
        self.attempt = self._first_attempt = task.envelope.attempt
        self.retried = 0
        self._services, self._settings = services, services.settings
        self._trace_id = trace_id_of(traceparent)
        self._generation_id = task.orchestration.generation_id if task.orchestration else None
        self._lock = threading.Lock()
        self._reason: CancelReason | None = None  # user or shutdown: for the whole run
        self._token: ReasonToken | None = None  # the running attempt's token
        self._wake = threading.Event()  # ends a backoff wait early
        self._state: TaskState | None = None  # the fold of what this run emitted
        self._stored: list[str] = []  # URLs the current attempt stored
        self._healthy = True
        self._abandoned = False
        self._stops = stops  # attempts of this task that stopped a worker (header + this run)
        self._log = {"task_id": self.task_id}

    # ---- called from other threads ------------------------------------------------------------

    def cancel(self, reason: CancelReason) -> None:
        """Stop the run: ``user`` or ``shutdown`` (the first wins); also ends a backoff wait."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            if self._token is not None:
                self._token.cancel(reason)
        self._wake.set()

    def abandon(self) -> None:
        """The worker gave up waiting for this run: it emits nothing more."""
        self._abandoned = True

    # ---- the run --------------------------------------------------------------------------------

    def execute(self) -> RunReport:
        low_memory = False
        while True:
            try:
                if self._reason is not None:
                    raise _Stop(self._reason)
                fault_point("before_processing")
                self._emit(TaskStatus.PROCESSING, progress=0.0)
                result, low_memory = self._attempt(low_memory)
                fault_point("after_store")
                if self._reason is CancelReason.USER:
                    raise _Stop(CancelReason.USER)  # stored, but the user no longer wants it
                return self._terminal(Outcome.COMPLETED, TaskStatus.COMPLETED, result=result)
            except _Stop as stop:
                if stop.reason is not CancelReason.USER:
                    return self._hand_back(Outcome.ABORTED)
                self._discard()
                return self._terminal(Outcome.CANCELLED, TaskStatus.CANCELLED,
                                      message="cancelled by request")
            except TaskFailure as failure:
                policy, message = self._settings.retry_policy, str(failure) or type(failure).__name__
                code, event_id = failure.code, None
                if getattr(failure, "stopped_worker", False):
                    self._stops += 1
                    stop = decide_after_stop(code, self.attempt, self._stops, policy,
                                             seed=self.task_id)
                    code, decision, message = stop.code, stop.decision, stop.message(message)
                    event_id = worker_stop_event_id(self.task_id, self.attempt)
                else:
                    decision = decide(code, self.attempt, policy, seed=self.task_id)
                error = TaskError(code=code, message=message, retryable=decision.retry,
                                  details=decision.reason)
                log.warning("task %s attempt %d failed: %s (%s)", self.task_id, self.attempt,
                            error.message, decision.reason, extra=self._log)
                if not decision.retry:
                    return self._terminal(Outcome.FAILED, TaskStatus.FAILED, error=error,
                                          event_id=event_id)
                # A retry is not FAILED (that is final): QUEUED for the next attempt, with this
                # attempt's error; a cancel meanwhile ends it CANCELLED (the loop's first check).
                check_new_attempt(self._state, self.attempt + 1)  # type: ignore[arg-type]
                self.attempt += 1
                self.retried += 1
                self._emit(TaskStatus.QUEUED, error=error, event_id=event_id,
                           message=retry_message(decision, datetime.now(UTC)))
                if self._healthy:
                    self._wake.wait(decision.delay_s)  # a cancel or a shutdown ends it early
                if not self._healthy:  # a stuck handler thread holds this process: hand it back
                    return self._hand_back(Outcome.FAILED)

    def _attempt(self, low_memory: bool) -> tuple[TaskResult, bool]:
        """One attempt (twice after a GPU out-of-memory); raises TaskFailure or _Stop."""
        check_admission(self.task.envelope.task_type, self.task.params,
                        self._settings.model_profile, self._settings.admission_budgets)
        policy = self._services.content_policy
        if policy is not None:
            try:
                refusal = policy(self.task.params)
            except Exception as exc:
                raise ProviderError(f"content-policy hook failed: {type(exc).__name__}: {exc}") from exc
            if refusal:
                raise ContentPolicyViolation(f"refused by the content policy: {refusal}")
        router = self._services.providers
        choices = router.plan(self.task) if router is not None else None
        if router is None or choices is None:
            return self._run_on(self.task, low_memory)
        # The primary, or the fallback within this same attempt (gpu_consumers/providers.py).
        return router.run(self.task, choices, lambda task: self._run_on(task, low_memory))

    def _run_on(self, task: TaskSubmitted, low_memory: bool) -> tuple[TaskResult, bool]:
        """The handler on ``task`` (the record's, or a provider's routed copy of it)."""
        while True:
            call, token = self._run_handler(low_memory, task)
            error = call.error
            if error is None:
                if self._reason is CancelReason.USER:
                    raise _Stop(CancelReason.USER)  # finished, but the user no longer wants it
                timing_ms = int(call.elapsed_s * 1000)
                return self._store(call.result, timing_ms), low_memory  # type: ignore[arg-type]
            if self._reason is not None:
                raise _Stop(self._reason)
            if isinstance(error, HardStop):
                raise self._hard_stopped(error, token)
            if token.reason is CancelReason.TIMEOUT and not isinstance(error, TaskFailure):
                raise self._timeout()
            if _is_oom(error):
                if not isinstance(error, ChildOutOfMemory):  # the child frees its own
                    free_gpu_cache()
                if not low_memory:
                    log.warning("task %s: GPU out of memory; once more with low_memory",
                                self.task_id, extra=self._log)
                    low_memory = True
                    continue
                oom = ProviderError(f"GPU out of memory, also with low_memory: {error}")
                oom.out_of_memory = True  # type: ignore[attr-defined]  # a reason to fall back
                raise oom from error
            if isinstance(error, TaskFailure):
                raise error
            if isinstance(error, TaskCancelled):
                raise ProviderError("the handler stopped as cancelled, but nobody cancelled it") \
                    from error
            name = getattr(error, "type_name", type(error).__name__)  # a ChildError's original
            raise ProviderError(f"{name}: {error}") from error

    def _hard_stopped(self, stop: HardStop, token: ReasonToken) -> TaskFailure:
        """The failure of an attempt whose handler process was killed or died: a worker stop."""
        if stop.why == "cancel" and token.reason is CancelReason.TIMEOUT:
            failure: TaskFailure = self._timeout(f" and {stop}")
        else:
            failure = ProviderError(f"the handler {stop}")
        failure.stopped_worker = True  # type: ignore[attr-defined]
        return failure

    def _timeout(self, suffix: str = "") -> ProviderTimeout:
        task_type = self.task.envelope.task_type
        limit = self._settings.timeout_for(task_type)
        return ProviderTimeout(f"{task_type.value} task ran past its {limit:g}s time limit{suffix}")

    def _run_handler(self, low_memory: bool, task: TaskSubmitted) -> tuple[Call, ReasonToken]:
        services, attempt = self._services, self.attempt
        token = ReasonToken()
        with self._lock:
            self._token = token
            if self._reason is not None:
                token.cancel(self._reason)
        progress = _Progress(lambda v: self._emit(TaskStatus.PROCESSING, progress=v, attempt=attempt),
                             self._settings.progress_interval_s)
        supervisor = services.supervisor
        if supervisor is not None:  # the child scopes the task's inputs to its tenant
            supervisor.ready()  # a fresh child builds its handlers before the clock starts
            call = services.handler_thread.submit(
                lambda: supervisor.run(task, attempt, low_memory, token, progress))
        else:
            # The task reads inputs only as its tenant may (gpu_consumers.input_scope).
            fetch = services.fetcher and services.fetcher.for_task(self._tenant_id)
            ctx = TaskContext(task_id=self.task_id, attempt=attempt, progress=progress,
                              cancel=token, fetch=fetch, models=services.models,
                              device=services.device, low_memory=low_memory)
            call = services.handler_thread.submit(
                lambda: services.handler_for(task).run(task.params, ctx))
        fault_point("mid_run")
        try:
            if not call.wait(self._settings.timeout_for(self.task.envelope.task_type)):
                token.cancel(CancelReason.TIMEOUT)  # the handler stops at its next step
                # Supervised, the child is killed after the grace: allow for reaping it too.
                grace = self._settings.timeout_grace_s + (_KILL_ALLOWANCE_S if supervisor else 0)
                if not call.wait(grace):
                    self._healthy = False
                    log.error("task %s: the handler ignored its cancel token for %gs after the "
                              "time limit; abandoned, the worker stops after this task",
                              self.task_id, self._settings.timeout_grace_s, extra=self._log)
                    failure = self._timeout(" and did not stop")
                    failure.stopped_worker = True  # type: ignore[attr-defined]
                    raise failure
        finally:
            progress.closed = True
        return call, token

    def _store(self, result: HandlerResult, timing_ms: int) -> TaskResult:
        if not result.outputs and result.text is None:
            raise ProviderError(f"handler {result.model} returned neither outputs nor text")
        urls = self._stored = []
        try:
            for i, output in enumerate(result.outputs):
                name = f"output-{i}" if len(result.outputs) > 1 else "output"
                urls.append(self._services.store.put(self.task_id, self.attempt, name, output,
                                                     tenant_id=self._tenant_id))
            return build_result(result, urls, timing_ms)
        except Exception as exc:
            self._discard()
            if isinstance(exc, TaskFailure):
                raise
            if isinstance(exc, ValueError):  # pydantic: the handler reported impossible metadata
                raise ProviderError(f"the handler's result breaks the contract: {exc}") from exc
            raise StorageFailure(f"storing the output failed: {type(exc).__name__}: {exc}") from exc

    def _discard(self) -> None:
        """Delete what the current attempt stored (a cancelled task, a failed store)."""
        urls, self._stored = self._stored, []
        for url in urls:
            try:
                self._services.store.delete(url)
            except Exception:
                log.exception("could not delete %s of task %s", url, self.task_id, extra=self._log)

    # ---- emitting -------------------------------------------------------------------------------

    def _emit(self, status: TaskStatus, *, attempt: int | None = None, ack: Ack | None = None,
              event_id: str | None = None, **fields: Any) -> None:
        if self._abandoned:
            return
        emitter = self._services.emitter
        event = emitter.status(self.task.envelope, attempt or self.attempt, status,
                               self._generation_id, event_id=event_id, **fields)
        if attempt is None or attempt == self.attempt:
            self._state = fold(self._state, event)
        emitter.send(emitter.topics.status, event, self._trace_id, ack)

    def _terminal(self, outcome: Outcome, status: TaskStatus, **fields: Any) -> RunReport:
        ack = Ack()
        self._emit(status, ack=ack, **fields)
        acked = not self._abandoned and self._services.emitter.flush(ack)
        fault_point("after_terminal")
        if not acked:
            log.error("task %s: the %s status was not acknowledged (%s); offset not committed",
                      self.task_id, status.value, ack.error, extra=self._log)
        log.info("task %s attempt %d %s", self.task_id, self.attempt, status.value.lower(),
                 extra={**self._log, "attempt": self.attempt})
        return RunReport(outcome, commit=acked, retried=self.retried,
                         healthy=self._healthy and acked)

    def _hand_back(self, outcome: Outcome) -> RunReport:
        """Give the task back to the group. Still at its record's attempt, the record is just
        left uncommitted. Past it, a copy carrying the attempt to run next is produced and the
        original committed, so the next worker does not restart at an attempt older than the
        statuses already show (which the fold would then ignore)."""
        if self.attempt == self._first_attempt or self._abandoned:
            return RunReport(outcome, commit=False, retried=self.retried, healthy=self._healthy)
        env = self.task.envelope.model_copy(update={
            "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC),
            "attempt": self.attempt})
        emitter, ack = self._services.emitter, Ack()
        emitter.send(emitter.topics.task(env.task_type), self.task.model_copy(update={"envelope": env}),
                     self._trace_id, ack, headers=[(STOPS_HEADER, str(self._stops).encode())])
        acked = emitter.flush(ack)
        log.info("task %s handed back to the group as attempt %d", self.task_id, self.attempt,
                 extra={**self._log, "attempt": self.attempt})
        return RunReport(outcome, commit=acked, retried=self.retried,
                         healthy=self._healthy and acked)
