"""Leases: no task stays PROCESSING forever, nor waits for a retry nobody will run. Pure: no
Kafka, no clock (``now`` is passed in).

A PROCESSING task whose last report is older than its lease is resolved in two steps, each a
status event that flows back through the status topic and the fold like any other:

1. **time-out**: the attempt ends with PROVIDER_TIMEOUT as ``state.retry.decide`` says (the one
   retry policy). A lease time-out means the worker is gone, so it is a *worker stop*
   (``state.stops``): when the task already stopped a worker on an earlier attempt, it ends
   FAILED/PROVIDER_ERROR ("the task stopped a worker twice: ...") instead of going to the next
   worker. Reported as the policy's decision says (``RetryDecision.reported_as``): FAILED for
   the attempt (final), or QUEUED for attempt ``n + 1`` carrying the time-out's error (checked
   by ``state.lifecycle.check_new_attempt``): the task now waits for its retry;
2. **retry**: once the back-off has passed, the task's submitted record is produced again for
   attempt ``n + 1`` on its task topic, with a second QUEUED for that attempt (same error) that
   says it was resubmitted. A cancel meanwhile (CANCELLED for attempt ``n + 1``) ends the wait:
   nothing is produced.

The same second step also covers a *worker's* retry wait (QUEUED ``n + 1`` with an error, written
by the worker that then sleeps the back-off and runs the attempt itself): if the task is still
QUEUED a lease after its back-off, that worker is gone and the record is produced again here.

Every output is a pure function of the folded state, with a deterministic event id (UUIDv5 of
task id, attempt and step) and occurred_at (the lease's expiry; the retry's due time), so a
repeat after a crash or a rebalance is an exact duplicate that the fold absorbs.

:class:`LeaseBook` is the timer's memory: which tasks need watching, and how fresh the
processor's view of each partition is. A lease may only be judged on a view that holds every
status event written before the moment it is judged at; see :meth:`LeaseBook.fresh_as_of`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged, TaskError, TaskSubmitted
from state.lifecycle import TaskState, check_new_attempt, is_stale
from state.retry import Action, RetryDecision, RetryPolicy, backoff_s
from state.stops import LEASE_NAMESPACE, StopDecision, decide_after_stop, lease_event_id

__all__ = ["LEASE_NAMESPACE", "LeaseAction", "LeaseBook", "Retry", "TimeOut", "is_lease_failure",
           "is_lease_retry_wait", "lease_event_id", "lost_record_event", "needs_watching",
           "resolve", "retry_events", "timeout_event"]

SOURCE = "processors"
# End-offset snapshots kept: at one per lease check, the view may lag this many checks.
SNAPSHOTS_KEPT = 360
# The resubmitted QUEUED comes this much after the due time, so that it outranks the waiting
# QUEUED in the fold (the later report of a status wins) even with a zero back-off.
_AFTER = timedelta(microseconds=1)


def is_lease_failure(state: TaskState) -> bool:
    """Is ``state`` the time-out this module emitted for the latest attempt that ran: FAILED for
    ``state.attempt``, or the QUEUED of ``state.attempt`` after attempt ``n - 1`` timed out?"""
    if state.status is TaskStatus.FAILED:
        return state.last_event_id == lease_event_id(state.task_id, state.attempt, "timeout")
    return is_lease_retry_wait(state)


def is_lease_retry_wait(state: TaskState) -> bool:
    """A task waiting for the retry this module holds (after its lease time-out)."""
    return state.status is TaskStatus.QUEUED and state.attempt > 1 and (
        state.last_event_id == lease_event_id(state.task_id, state.attempt - 1, "timeout"))


def _is_retry_wait(state: TaskState) -> bool:
    """Waiting for attempt ``n`` after an error, the record of attempt ``n`` not yet resubmitted
    here (the worker's own wait, or a lease time-out's)."""
    return state.awaiting_retry and (
        state.last_event_id != lease_event_id(state.task_id, state.attempt, "queued"))


@dataclass(frozen=True, slots=True)
class TimeOut:
    """Report the time-out of ``state.attempt``: FAILED, or QUEUED for the next attempt."""

    state: TaskState
    lease_s: float
    stop: StopDecision  # a lease time-out is a worker stop: the poison rule may end the task

    @property
    def decision(self) -> RetryDecision:
        return self.stop.decision

    @property
    def failed_at(self) -> datetime:
        return self.state.updated_at + timedelta(seconds=self.lease_s)


@dataclass(frozen=True, slots=True)
class Retry:
    """Produce the task again for ``state.attempt`` (the attempt waiting, ``decision.next_attempt``)
    and a QUEUED that says so. ``wait_s``: the back-off, plus the lease for a worker's wait."""

    state: TaskState
    decision: RetryDecision
    wait_s: float

    @property
    def due_at(self) -> datetime:
        return self.state.updated_at + timedelta(seconds=self.wait_s)

    @property
    def stops(self) -> int:
        """Worker stops of the task so far (``state.stops.STOPS_HEADER`` of the new record)."""
        return len(self.state.stopped_attempts)


LeaseAction = TimeOut | Retry


def _stop_count(state: TaskState) -> int:
    """Worker stops of the task, counting the time-out of ``state.attempt`` with its earlier ones
    (the same count before and after its report is folded in)."""
    return len(state.stopped_attempts | {state.attempt})


def _stop(state: TaskState, policy: RetryPolicy) -> StopDecision:
    """The time-out of ``state.attempt`` counts as a worker stop, with the task's earlier ones."""
    return decide_after_stop(ErrorCode.PROVIDER_TIMEOUT, state.attempt, _stop_count(state), policy,
                             seed=state.task_id)


def _retry(state: TaskState, lease_s: float, policy: RetryPolicy) -> Retry:
    """The resubmission a retry wait calls for: after the back-off of the failed attempt (the
    one the worker or the time-out used: same policy, same seed), plus ``lease_s`` when a worker
    holds the wait (it runs the attempt itself unless it is gone)."""
    failed = state.attempt - 1
    delay = backoff_s(failed, policy, seed=state.task_id)
    decision = RetryDecision(Action.RETRY, f"attempt {state.attempt} resubmitted after attempt "
                             f"{failed} failed", delay_s=delay, next_attempt=state.attempt)
    return Retry(state, decision, delay if is_lease_retry_wait(state) else delay + lease_s)


def resolve(
    state: TaskState, now: datetime, lease_s: float, policy: RetryPolicy
) -> LeaseAction | None:
    """What the lease of ``state`` calls for at ``now``: a time-out, a retry that is due, or
    nothing. Raises ``IllegalNewAttempt`` if a time-out's retry would break the lifecycle rules."""
    if is_stale(state, now, lease_s):
        action = TimeOut(state, lease_s, _stop(state, policy))
        if action.decision.retry:
            check_new_attempt(state, state.attempt + 1)
        return action
    if _is_retry_wait(state):
        retry = _retry(state, lease_s, policy)
        if now >= retry.due_at:
            return retry
    return None


def needs_watching(state: TaskState, policy: RetryPolicy) -> bool:
    """Will :func:`resolve` ever act on ``state`` (if nothing else happens to the task)?"""
    return state.status is TaskStatus.PROCESSING or _is_retry_wait(state)


# --------------------------------------------------------------------------- the outputs


def timeout_event(action: TimeOut) -> StatusChanged:
    """FAILED for the timed-out attempt, or QUEUED for the next one (both with the time-out's
    error and the deterministic ``timeout`` id of the timed-out attempt: a worker stop)."""
    state, decision, stop = action.state, action.decision, action.stop
    kind = state.task_type.slug if state.task_type else "task"
    status, attempt = decision.reported_as(state.attempt)
    envelope = Envelope(
        event_id=lease_event_id(state.task_id, state.attempt, "timeout"),
        task_id=state.task_id,
        task_type=state.task_type,
        attempt=attempt,
        occurred_at=action.failed_at,
        source=SOURCE,
    )
    error = TaskError(
        code=stop.code,
        message=stop.message(f"no report from the worker for {action.lease_s:g}s (the {kind} lease)"),
        retryable=decision.retry,
        details=decision.reason,
    )
    message = decision.reason
    if decision.retry:
        due = action.failed_at + timedelta(seconds=decision.delay_s)
        message = f"{decision.reason}; runs at {due.isoformat(timespec='milliseconds')}"
    return StatusChanged(envelope=envelope, status=status, error=error, message=message,
                         generation_id=state.generation_id)


def retry_events(action: Retry, submitted: TaskSubmitted) -> tuple[TaskSubmitted, StatusChanged]:
    """The task record for the waiting attempt (``submitted`` with a new envelope: same task id,
    origin and parameters) and its second QUEUED (the wait's error kept: the state still says
    why it runs again)."""
    state = action.state
    attempt, task_id = state.attempt, state.task_id
    envelope = submitted.envelope.model_copy(update={
        "event_id": lease_event_id(task_id, attempt, "retry"), "attempt": attempt,
        "occurred_at": action.due_at, "source": SOURCE,
    })
    record = submitted.model_copy(update={"envelope": envelope})
    error = None if state.error_code is None else TaskError(
        code=state.error_code, message=state.error_message or "", retryable=True)
    queued = StatusChanged(
        envelope=envelope.model_copy(update={
            "event_id": lease_event_id(task_id, attempt, "queued"),
            "occurred_at": action.due_at + _AFTER}),
        status=TaskStatus.QUEUED,
        message=f"attempt {attempt} resubmitted",
        error=error,
        generation_id=state.generation_id,
    )
    return record, queued


def lost_record_event(action: Retry) -> StatusChanged:
    """FAILED for the waiting attempt when its task record cannot be found to resubmit: the
    task cannot run again, and a wait nobody ends would leave it QUEUED forever."""
    state = action.state
    code = state.error_code or ErrorCode.PROVIDER_ERROR
    envelope = Envelope(event_id=lease_event_id(state.task_id, state.attempt, "lost"),
                        task_id=state.task_id, task_type=state.task_type, attempt=state.attempt,
                        occurred_at=action.due_at, source=SOURCE)
    error = TaskError(code=code, retryable=False,
                      message=f"{state.error_message or code.value}; attempt {state.attempt} "
                              f"could not be resubmitted: its task record was not found")
    return StatusChanged(envelope=envelope, status=TaskStatus.FAILED, error=error,
                         message=error.message, generation_id=state.generation_id)


# --------------------------------------------------------------------------- the timer's memory


class LeaseBook:
    """Watched tasks by partition, end-offset snapshots, and the actions already sent."""

    def __init__(self, lease_for: Callable[[TaskType | None], float], policy: RetryPolicy) -> None:
        self._lease_for = lease_for
        self._policy = policy
        self._watched: dict[str, tuple[int, TaskState]] = {}
        self._snapshots: deque[tuple[datetime, Mapping[int, int]]] = deque(maxlen=SNAPSHOTS_KEPT)
        self._sent: dict[tuple[str, int, type], datetime] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def observe(self, partition: int, state: TaskState) -> None:
        """Record the latest state of a task (every change the fold publishes)."""
        if needs_watching(state, self._policy):
            self._watched[state.task_id] = (partition, state)
        else:
            self._watched.pop(state.task_id, None)

    def keep_partitions(self, partitions: Iterable[int]) -> None:
        """Forget tasks of partitions this process no longer owns (their new owner watches)."""
        keep = set(partitions)
        for task_id in [t for t, (p, _) in self._watched.items() if p not in keep]:
            del self._watched[task_id]

    def forget(self, task_id: str) -> None:
        self._watched.pop(task_id, None)

    def note_end_offsets(self, at: datetime, end_offsets: Mapping[int, int]) -> None:
        """The status partitions' end offsets, read at ``at`` (before reading committed ones)."""
        self._snapshots.append((at, dict(end_offsets)))

    def fresh_as_of(self, committed: Mapping[int, int | None]) -> dict[int, datetime]:
        """For each partition, the latest snapshot time ``t`` such that every record written
        before ``t`` has been folded (and its offset committed): the moment the view of that
        partition is complete as of. The app commits only offsets it has folded, so
        ``committed >= end offset at t`` proves it. A partition lagging behind every kept
        snapshot is left out: its leases wait."""
        fresh: dict[int, datetime] = {}
        for at, ends in self._snapshots:  # oldest first: later ones overwrite
            for partition, end in ends.items():
                if (committed.get(partition) or 0) >= end:
                    fresh[partition] = at
        return fresh

    def due(self, fresh: Mapping[int, datetime]) -> list[LeaseAction]:
        """The actions the watched tasks call for, each judged at its partition's fresh time.

        An action already sent is repeated only once the view is fresh past the moment it was
        sent (its output was folded) and the state still calls for it."""
        actions: list[LeaseAction] = []
        for partition, state in list(self._watched.values()):
            now = fresh.get(partition)
            if now is None:
                continue
            action = resolve(state, now, self._lease_for(state.task_type), self._policy)
            if action is None:
                continue
            sent_at = self._sent.get((state.task_id, state.attempt, type(action)))
            if sent_at is None or now > sent_at:
                actions.append(action)
        return actions

    def sent(self, action: LeaseAction, at: datetime) -> None:
        """``action``'s outputs were acknowledged by the broker at ``at``."""
        self._sent[(action.state.task_id, action.state.attempt, type(action))] = at
        if len(self._sent) > 4 * len(self._watched) + 1024:  # drop entries of settled tasks
            watched = self._watched
            self._sent = {k: v for k, v in self._sent.items() if k[0] in watched}
