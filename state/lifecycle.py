"""The task lifecycle: one transition table, one guard, and the fold of status events.

Pure: no Kafka, database or I/O. ``ALLOWED`` + :func:`check_transition` say which moves a
component may *emit*; :func:`fold` turns *observed* status events, in any order, into a
:class:`TaskState`. (ARCHITECTURE.md §4.)

Retries (the seed's FAILED is an end state, issue 17): a failure that the retry policy retries
is not FAILED. Whoever decides it (``state.retry.decide``: the worker, or the processors' lease
timer) emits ``QUEUED`` for attempt ``n + 1`` carrying the failed attempt's error -- the move
PROCESSING(n) -> QUEUED(n + 1), checked by :func:`check_new_attempt`. So FAILED, COMPLETED and
CANCELLED are final, always: no status follows them and no attempt starts from them, and a task
is "ended" exactly when its status is terminal. A QUEUED state with an error is a task waiting
for its next attempt (:attr:`TaskState.awaiting_retry`); it may still be cancelled.

The fold, precisely. Every event belongs to an attempt ``n >= 1``; a retry is attempt ``n + 1``
of the same task id. Events are ordered by a total "outranks" order:

1. higher ``attempt`` first: an older attempt never overwrites a newer one, and a newer attempt
   starts over from its own event, whatever the old attempt's outcome;
2. then status rank ``PENDING < QUEUED < PROCESSING < terminal``: no backwards move within an
   attempt; skipping forward is fine (a terminal is accepted from any non-terminal status);
3. two terminals of one attempt (a race): ``COMPLETED > CANCELLED > FAILED`` -- a produced
   result is never thrown away, and a cancel beats a failure so it is not retried;
4. same status, same attempt: non-terminal -- the latest report (``occurred_at``, then
   ``event_id``) wins, so heartbeats refresh ``updated_at``; terminal -- the *first* report wins,
   so a terminal state keeps its result.

The state's status, attempt, result, error, message, last_event_id, updated_at (the winner's
``occurred_at``) and completed_at come from the winning event; the rest are merges:
``created_at`` = earliest event of any attempt; ``queued_at``/``started_at`` = earliest
QUEUED/PROCESSING event of the state's attempt; ``progress`` = highest progress reported in the
attempt (``COMPLETED`` forces 1.0); ``task_type`` and ``generation_id`` = the first non-null one
seen (every event of a task carries the same, or none, so the order does not matter);
``stopped_attempts`` = the union, over every attempt, of the attempts a worker stop ended
(``state.stops.stopped_attempt``: a hard stop or a lease time-out, reported by the attempt's
FAILED or by the next attempt's QUEUED; the poison-task rule). Because
the winner is the maximum of a total order and the merges are min/max, every permutation,
duplication or replay of a set of events (distinct ``event_id`` per distinct event) folds to the
same state -- except ``version``, which counts the changes actually applied (+1 each, never on a
no-op) and so depends on arrival order.

"Absorbing", precisely: a terminal state's status, result and error never change for events of
its own or an older attempt (barring the race rule 3), and an event that changes nothing returns
the very same object. A late straggler of the same attempt may still fill in ``queued_at``,
``started_at`` or raise ``progress`` (that is what convergence requires). A *newer* attempt
replaces any terminal, COMPLETED and CANCELLED included: letting terminals swallow newer attempts
in the fold would make the result depend on arrival order. Finality of every terminal is enforced
where attempts are created, by :func:`check_new_attempt` (only from PROCESSING), so a newer
attempt after a terminal never happens in a correct history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from schemas.enums import TERMINAL_STATUSES, ErrorCode, TaskStatus, TaskType
from state.errors import IllegalNewAttempt, IllegalTransition, InvalidStatusEvent, TaskIdMismatch
from state.stops import stopped_attempt

_S = TaskStatus

# Moves a component may emit within one attempt. Any non-terminal may fail or be cancelled (a
# queued record that cannot be decoded is FAILED/INVALID_INPUT, §4); only work in PROCESSING
# completes; PROCESSING -> PROCESSING is a progress report. Terminals have no exit. The one move
# between attempts, PROCESSING(n) -> QUEUED(n + 1) (a retry), is check_new_attempt's.
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    _S.PENDING: frozenset({_S.QUEUED, _S.FAILED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.PROCESSING, _S.FAILED, _S.CANCELLED}),
    _S.PROCESSING: frozenset({_S.PROCESSING, _S.COMPLETED, _S.FAILED, _S.CANCELLED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}

RANK: dict[TaskStatus, int] = {
    _S.PENDING: 0, _S.QUEUED: 1, _S.PROCESSING: 2, _S.COMPLETED: 3, _S.FAILED: 3, _S.CANCELLED: 3,
}

# Rule 3: which terminal wins when two race within one attempt.
TERMINAL_PRECEDENCE: dict[TaskStatus, int] = {_S.FAILED: 0, _S.CANCELLED: 1, _S.COMPLETED: 2}

# Statuses from which attempt n + 1 may start: the retry of a failed (or timed-out) attempt,
# decided while that attempt is the latest status. Never from a terminal: those are final.
NEW_ATTEMPT_FROM: frozenset[TaskStatus] = frozenset({_S.PROCESSING})
# The first status of attempt n + 1: the retry waits QUEUED, carrying attempt n's error.
NEW_ATTEMPT_STATUS = _S.QUEUED


def check_transition(current: TaskStatus, new: TaskStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> new`` is in :data:`ALLOWED`."""
    if new not in ALLOWED[current]:
        raise IllegalTransition(current, new, ALLOWED[current])


class ErrorLike(Protocol):
    @property
    def code(self) -> ErrorCode: ...
    @property
    def message(self) -> str: ...


class StatusEventLike(Protocol):
    """What the fold reads from a flat status event (see :func:`view_event` for the other shape)."""

    @property
    def event_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def status(self) -> TaskStatus: ...
    @property
    def progress(self) -> float | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def result(self) -> object | None: ...
    @property
    def error(self) -> ErrorLike | None: ...


@dataclass(frozen=True, slots=True)
class EventView:
    """One status event, flattened and checked: the only event shape the fold itself touches."""

    event_id: str
    task_id: str
    attempt: int
    occurred_at: datetime  # timezone-aware, normalised to UTC
    task_type: TaskType | None
    status: TaskStatus
    progress: float | None
    message: str | None
    result: object | None
    error_code: ErrorCode | None
    error_message: str | None
    generation_id: str | None = None


def view_event(event: object) -> EventView:
    """Read a status event of either shape: flat (:class:`StatusEventLike`) or with ``event_id``,
    ``task_id``, ``attempt``, ``occurred_at`` and ``task_type`` under ``.envelope`` (as
    ``schemas.events.StatusChanged``). Raise :class:`InvalidStatusEvent` on a bad value."""
    flat: Any = event  # either shape: its attributes are checked below
    head: Any = getattr(event, "envelope", None) or flat
    try:
        event_id, task_id = head.event_id, head.task_id
        attempt, occurred_at = head.attempt, head.occurred_at
        raw_type = getattr(head, "task_type", None)
        status = TaskStatus(flat.status)
        progress = getattr(event, "progress", None)
        error = getattr(event, "error", None)
        code = None if error is None else ErrorCode(error.code)
        err_msg = None if error is None else error.message
        generation_id = getattr(event, "generation_id", None)
        task_type = raw_type
        if raw_type is not None and not isinstance(raw_type, TaskType):
            task_type = TaskType.parse(raw_type)
    except (AttributeError, ValueError) as exc:
        raise InvalidStatusEvent(f"status event cannot be folded: {exc}") from exc
    where = f"status event {event_id!r} of task {task_id!r}"
    if not event_id or not task_id:
        raise InvalidStatusEvent(f"{where}: event_id and task_id must be non-empty")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidStatusEvent(f"{where}: attempt must be an int >= 1, got {attempt!r}")
    if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
        raise InvalidStatusEvent(f"{where}: occurred_at must be a timezone-aware datetime")
    if generation_id is not None and not isinstance(generation_id, str):
        raise InvalidStatusEvent(f"{where}: generation_id must be text, got {generation_id!r}")
    if progress is not None and (
        isinstance(progress, bool)
        or not isinstance(progress, (int, float))
        or not 0.0 <= progress <= 1.0
    ):
        raise InvalidStatusEvent(f"{where}: progress must lie in [0, 1], got {progress!r}")
    return EventView(
        event_id=event_id, task_id=task_id, attempt=attempt,
        occurred_at=occurred_at.astimezone(UTC), task_type=task_type, status=status,
        progress=None if progress is None else float(progress),
        message=getattr(event, "message", None), result=getattr(event, "result", None),
        error_code=code, error_message=err_msg, generation_id=generation_id or None,
    )


@dataclass(frozen=True, slots=True)
class TaskState:
    """The folded state of one task. Field provenance is in the module docstring."""

    task_id: str
    task_type: TaskType | None
    status: TaskStatus
    attempt: int
    progress: float  # 0..1
    version: int  # 1 for the first event, +1 for every change applied
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime  # occurred_at of the event the state reflects (last_event_id)
    last_event_id: str
    message: str | None = None
    result: object | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    # The generation the task belongs to (StatusChanged.generation_id), None for a lone task.
    generation_id: str | None = None
    # Attempts that ended by a worker stop (a hard stop or a lease time-out): the poison rule.
    stopped_attempts: frozenset[int] = frozenset()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def awaiting_retry(self) -> bool:
        """QUEUED for attempt ``n > 1`` after attempt ``n - 1`` failed (its error is kept)."""
        return self.status is _S.QUEUED and self.attempt > 1 and self.error_code is not None


def _outranks(ev: EventView, state: TaskState) -> bool:
    """Rules 1-4: does ``ev`` replace the event ``state`` currently reflects?"""
    mine = (ev.attempt, RANK[ev.status], TERMINAL_PRECEDENCE.get(ev.status, 0))
    theirs = (state.attempt, RANK[state.status], TERMINAL_PRECEDENCE.get(state.status, 0))
    if mine != theirs:
        return mine > theirs
    report, current = (ev.occurred_at, ev.event_id), (state.updated_at, state.last_event_id)
    return report < current if ev.status in TERMINAL_STATUSES else report > current


def _earliest(current: datetime | None, ev: EventView, status: TaskStatus) -> datetime | None:
    if ev.status is not status:
        return current
    return ev.occurred_at if current is None else min(current, ev.occurred_at)


def _outcome(ev: EventView) -> dict[str, object]:
    """The fields taken from the winning event."""
    terminal = ev.status in TERMINAL_STATUSES
    return dict(
        status=ev.status, attempt=ev.attempt, last_event_id=ev.event_id,
        updated_at=ev.occurred_at, completed_at=ev.occurred_at if terminal else None,
        message=ev.message, result=ev.result,
        error_code=ev.error_code, error_message=ev.error_message,
    )


def _stopped(ev: EventView, stopped: frozenset[int]) -> frozenset[int]:
    attempt = stopped_attempt(ev.task_id, ev.attempt, ev.status, ev.event_id)
    if attempt is not None and attempt not in stopped:
        return stopped | {attempt}
    return stopped


def _start(
    ev: EventView, created_at: datetime, task_type: TaskType | None, version: int,
    generation_id: str | None, stopped: frozenset[int] = frozenset(),
) -> TaskState:
    """A fresh state for the first event seen of an attempt."""
    return TaskState(
        task_id=ev.task_id, task_type=task_type, version=version, created_at=created_at,
        generation_id=generation_id, stopped_attempts=_stopped(ev, stopped),
        progress=1.0 if ev.status is _S.COMPLETED else (ev.progress or 0.0),
        queued_at=_earliest(None, ev, _S.QUEUED), started_at=_earliest(None, ev, _S.PROCESSING),
        **_outcome(ev),  # type: ignore[arg-type]
    )


def fold(state: TaskState | None, event: StatusEventLike | object) -> TaskState:
    """Apply one status event. Returns ``state`` itself when the event changes nothing."""
    ev = view_event(event)
    if state is None:
        return _start(ev, ev.occurred_at, ev.task_type, version=1, generation_id=ev.generation_id)
    if ev.task_id != state.task_id:
        raise TaskIdMismatch(
            f"event {ev.event_id} of task {ev.task_id} folded into the state of task "
            f"{state.task_id}; key the state by the event's task id"
        )
    created_at = min(state.created_at, ev.occurred_at)
    task_type = state.task_type or ev.task_type
    generation_id = state.generation_id or ev.generation_id
    if ev.attempt > state.attempt:  # rule 1: a newer attempt starts over
        return _start(ev, created_at, task_type, version=state.version + 1,
                      generation_id=generation_id, stopped=state.stopped_attempts)
    changes: dict[str, object] = dict(created_at=created_at, task_type=task_type,
                                      generation_id=generation_id,
                                      stopped_attempts=_stopped(ev, state.stopped_attempts))
    if ev.attempt == state.attempt:
        changes.update(
            queued_at=_earliest(state.queued_at, ev, _S.QUEUED),
            started_at=_earliest(state.started_at, ev, _S.PROCESSING),
            progress=max(state.progress, ev.progress or 0.0),
        )
        if _outranks(ev, state):
            changes.update(_outcome(ev))
            if ev.status is _S.COMPLETED:
                changes["progress"] = 1.0
    new = dataclasses.replace(state, **changes)  # type: ignore[arg-type]
    if new == state:
        return state
    return dataclasses.replace(new, version=state.version + 1)


def fold_all(
    events: Iterable[StatusEventLike | object], state: TaskState | None = None
) -> TaskState | None:
    """Fold ``events`` in order onto ``state``; ``None`` if there was nothing to fold."""
    for event in events:
        state = fold(state, event)
    return state


def check_new_attempt(state: TaskState, attempt: int) -> None:
    """Guard for whoever emits attempt ``n + 1`` (its QUEUED with the failed attempt's error):
    the worker after a retryable failure, the lease timer after a time-out.

    Allowed only as ``state.attempt + 1`` and only from PROCESSING (the attempt that failed or
    timed out is still the latest status; the lease timer checks :func:`is_stale`). FAILED,
    COMPLETED and CANCELLED are final.
    """
    if attempt != state.attempt + 1:
        why = f"the next attempt is {state.attempt + 1}; fold the latest status events first"
    elif state.status not in NEW_ATTEMPT_FROM:
        why = (
            f"a {state.status.value} task is final; submit a new task instead"
            if state.is_terminal
            else "it has not run yet; let it run or cancel it"
        )
    else:
        return
    raise IllegalNewAttempt(state.task_id, state.status, state.attempt, attempt, why)


def check_emit(state: TaskState | None, status: TaskStatus, attempt: int) -> None:
    """The whole guard for emitting ``status`` for ``attempt`` onto the folded ``state``. The
    same attempt moves as :data:`ALLOWED` says; the next attempt starts only as a retry --
    :data:`NEW_ATTEMPT_STATUS` from a status :func:`check_new_attempt` allows; an older attempt,
    or one further ahead, is never emitted. ``state`` None (the emitter has folded nothing, as a
    worker starting a record) allows any first event."""
    if state is None:
        return
    if attempt == state.attempt:
        check_transition(state.status, status)
        return
    check_new_attempt(state, attempt)
    if status is not NEW_ATTEMPT_STATUS:
        raise IllegalNewAttempt(
            state.task_id, state.status, state.attempt, attempt,
            f"a retry starts {NEW_ATTEMPT_STATUS.value} (with the failed attempt's error), "
            f"not {status.value}")


def is_stale(state: TaskState, now: datetime, lease_s: float) -> bool:
    """True for a PROCESSING task whose last report (``updated_at``) is older than ``lease_s``.

    ``now`` must be timezone-aware. Any PROCESSING event of the attempt that is the latest report
    refreshes the lease, with or without progress.
    """
    if state.status is not _S.PROCESSING:
        return False
    return (now - state.updated_at).total_seconds() > lease_s
