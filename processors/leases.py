"""Leases: no task stays PROCESSING forever. Pure: no Kafka, no clock (``now`` is passed in).

A PROCESSING task whose last report is older than its lease is resolved in two steps, each a
status event that flows back through the status topic and the fold like any other:

1. **time-out**: ``FAILED``/``PROVIDER_TIMEOUT`` for that attempt, ``retryable`` as
   ``state.retry.decide`` says (the one retry policy). A lease time-out means the worker is
   gone, so it is a *worker stop* (``state.stops``): when the task already stopped a worker on
   an earlier attempt, it ends FAILED/PROVIDER_ERROR ("the task stopped a worker twice: ...")
   instead of going to the next worker;
2. **retry**, when the policy says so and ``state.lifecycle.check_new_attempt`` allows it: once
   the back-off has passed, the task's submitted record is produced again for attempt ``n + 1``
   on its task topic, with ``QUEUED`` for that attempt.

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
from state.retry import RetryDecision, RetryPolicy
from state.stops import LEASE_NAMESPACE, StopDecision, decide_after_stop, lease_event_id

__all__ = ["LEASE_NAMESPACE", "LeaseAction", "LeaseBook", "Retry", "TimeOut", "is_lease_failure",
           "lease_event_id", "needs_watching", "resolve", "retry_events", "timeout_event"]

SOURCE = "processors"
# End-offset snapshots kept: at one per lease check, the view may lag this many checks.
SNAPSHOTS_KEPT = 360


def is_lease_failure(state: TaskState) -> bool:
    """Is ``state`` the FAILED this module emitted for its attempt (not a worker's failure)?"""
    return state.status is TaskStatus.FAILED and state.last_event_id == lease_event_id(
        state.task_id, state.attempt, "timeout"
    )


@dataclass(frozen=True, slots=True)
class TimeOut:
    """Emit FAILED/PROVIDER_TIMEOUT for ``state.attempt``."""

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
    """Produce the task again for ``decision.next_attempt`` (and QUEUED for it)."""

    state: TaskState
    decision: RetryDecision

    @property
    def due_at(self) -> datetime:
        return self.state.updated_at + timedelta(seconds=self.decision.delay_s)

    @property
    def stops(self) -> int:
        """Worker stops of the task so far (``state.stops.STOPS_HEADER`` of the new record)."""
        return _stop_count(self.state)


LeaseAction = TimeOut | Retry


def _stop_count(state: TaskState) -> int:
    """Worker stops of the task, counting the time-out of ``state.attempt`` with its earlier ones
    (the same count before and after its FAILED is folded in)."""
    return len(state.stopped_attempts | {state.attempt})


def _stop(state: TaskState, policy: RetryPolicy) -> StopDecision:
    """The time-out of ``state.attempt`` counts as a worker stop, with the task's earlier ones."""
    return decide_after_stop(ErrorCode.PROVIDER_TIMEOUT, state.attempt, _stop_count(state), policy,
                             seed=state.task_id)


def resolve(
    state: TaskState, now: datetime, lease_s: float, policy: RetryPolicy
) -> LeaseAction | None:
    """What the lease of ``state`` calls for at ``now``: a time-out, a retry that is due, or
    nothing. Raises ``IllegalNewAttempt`` if a retry would break the lifecycle rules."""
    if is_stale(state, now, lease_s):
        return TimeOut(state, lease_s, _stop(state, policy))
    if is_lease_failure(state):
        decision = _stop(state, policy).decision
        if decision.retry:
            retry = Retry(state, decision)
            if now >= retry.due_at:
                check_new_attempt(state, decision.next_attempt)  # type: ignore[arg-type]
                return retry
    return None


def needs_watching(state: TaskState, policy: RetryPolicy) -> bool:
    """Will :func:`resolve` ever act on ``state`` (if nothing else happens to the task)?"""
    if state.status is TaskStatus.PROCESSING:
        return True
    return is_lease_failure(state) and _stop(state, policy).decision.retry


# --------------------------------------------------------------------------- the outputs


def timeout_event(action: TimeOut) -> StatusChanged:
    state, decision, stop = action.state, action.decision, action.stop
    kind = state.task_type.slug if state.task_type else "task"
    envelope = Envelope(
        event_id=lease_event_id(state.task_id, state.attempt, "timeout"),
        task_id=state.task_id,
        task_type=state.task_type,
        attempt=state.attempt,
        occurred_at=action.failed_at,
        source=SOURCE,
    )
    error = TaskError(
        code=stop.code,
        message=stop.message(f"no report from the worker for {action.lease_s:g}s (the {kind} lease)"),
        retryable=decision.retry,
        details=decision.reason,
    )
    return StatusChanged(envelope=envelope, status=TaskStatus.FAILED, error=error,
                         message=decision.reason)


def retry_events(action: Retry, submitted: TaskSubmitted) -> tuple[TaskSubmitted, StatusChanged]:
    """The task record for the next attempt (``submitted`` with a new envelope: same task id,
    origin and parameters) and its QUEUED status."""
    attempt = action.decision.next_attempt
    assert attempt is not None
    task_id = action.state.task_id
    envelope = submitted.envelope.model_copy(update={
        "event_id": lease_event_id(task_id, attempt, "retry"), "attempt": attempt,
        "occurred_at": action.due_at, "source": SOURCE,
    })
    record = submitted.model_copy(update={"envelope": envelope})
    queued = StatusChanged(
        envelope=envelope.model_copy(update={"event_id": lease_event_id(task_id, attempt, "queued")}),
        status=TaskStatus.QUEUED,
        message=f"attempt {attempt} after a lease time-out",
    )
    return record, queued


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
