"""Lifecycle rules one by one: the transition table and guard, then each rule of the fold.

The event stand-ins at the top (flat and enveloped shapes) are reused by the property tests.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.errors import ComputeError
from state.errors import (
    IllegalNewAttempt,
    IllegalTransition,
    InvalidStatusEvent,
    LifecycleError,
    TaskIdMismatch,
)
from state.lifecycle import (
    ALLOWED,
    TaskState,
    check_emit,
    check_new_attempt,
    check_transition,
    fold,
    fold_all,
    is_stale,
    view_event,
)

P, Q, R = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.PROCESSING
C, F, X = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Err:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Flat:
    event_id: str
    task_id: str
    attempt: int
    occurred_at: datetime
    status: TaskStatus
    progress: float | None = None
    message: str | None = None
    result: object | None = None
    error: Err | None = None


@dataclass(frozen=True)
class Envelope:
    event_id: str
    task_id: str
    attempt: int
    occurred_at: datetime
    task_type: object | None = None


@dataclass(frozen=True)
class Enveloped:
    envelope: Envelope
    status: TaskStatus
    progress: float | None = None
    message: str | None = None
    result: object | None = None
    error: Err | None = None


def ev(
    event_id: str,
    status: TaskStatus,
    t: float,
    attempt: int = 1,
    progress: float | None = None,
    *,
    task_id: str = "task-1",
    result: object | None = None,
    error: Err | None = None,
    message: str | None = None,
) -> Flat:
    return Flat(event_id, task_id, attempt, at(t), status, progress, message, result, error)


def wrap(e: Flat, task_type: object | None = None) -> Enveloped:
    """The same event in the enveloped shape (as ``schemas.events.StatusChanged``)."""
    env = Envelope(e.event_id, e.task_id, e.attempt, e.occurred_at, task_type)
    return Enveloped(env, e.status, e.progress, e.message, e.result, e.error)


# --- the transition table and its guard -------------------------------------------------------

# Written out independently of ALLOWED: the spec of which moves a component may emit.
LEGAL_MOVES = {
    (P, Q), (P, F), (P, X),
    (Q, R), (Q, F), (Q, X),
    (R, R), (R, C), (R, F), (R, X),
}


@pytest.mark.parametrize("current,new", list(itertools.product(TaskStatus, repeat=2)))
def test_guard_matches_table_for_every_pair(current: TaskStatus, new: TaskStatus) -> None:
    assert (new in ALLOWED[current]) == ((current, new) in LEGAL_MOVES)
    if (current, new) in LEGAL_MOVES:
        check_transition(current, new)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(current, new)
        assert info.value.current is current and info.value.new is new
        text = str(info.value)
        assert f"{current.value} -> {new.value}" in text and "new attempt" in text


def test_table_covers_every_status_and_terminals_have_no_exit() -> None:
    assert set(ALLOWED) == set(TaskStatus)
    assert all(not ALLOWED[s] for s in (C, F, X))


def test_errors_share_one_root() -> None:
    for cls in (IllegalTransition, IllegalNewAttempt, InvalidStatusEvent, TaskIdMismatch):
        assert issubclass(cls, LifecycleError)
    assert issubclass(LifecycleError, ComputeError)


# --- fold: the first event and forward moves ------------------------------------------------


def test_first_event_starts_state_at_version_1() -> None:
    s = fold(None, ev("e1", P, 0))
    assert (s.task_id, s.status, s.attempt, s.version, s.progress) == ("task-1", P, 1, 1, 0.0)
    assert s.created_at == at(0) and s.updated_at == at(0) and s.last_event_id == "e1"
    assert s.queued_at is s.started_at is s.completed_at is None


def test_happy_path_keeps_every_timestamp_and_counts_versions() -> None:
    steps = [ev("e1", P, 0), ev("e2", Q, 1), ev("e3", R, 2, progress=0.2),
             ev("e4", R, 3, progress=0.7), ev("e5", C, 4, result={"url": "s3://x"})]
    states: list[TaskState] = []
    for step in steps:
        states.append(fold(states[-1] if states else None, step))
    assert [s.status for s in states] == [P, Q, R, R, C]
    assert [s.version for s in states] == [1, 2, 3, 4, 5]
    final = states[-1]
    assert (final.created_at, final.queued_at, final.started_at, final.completed_at) == (
        at(0), at(1), at(2), at(4))
    assert final.progress == 1.0 and final.result == {"url": "s3://x"}
    assert final.updated_at == at(4) and final.last_event_id == "e5"


@pytest.mark.parametrize("frm,to", [(P, R), (P, C), (P, F), (Q, C), (Q, F), (P, X), (Q, X)])
def test_skipping_forward_is_accepted(frm: TaskStatus, to: TaskStatus) -> None:
    s = fold(fold(None, ev("e1", frm, 0)), ev("e2", to, 1))
    assert s.status is to and s.version == 2


def test_failed_keeps_error_and_progress_reached() -> None:
    s = fold_all([ev("e1", R, 0, progress=0.4),
                  ev("e2", F, 1, error=Err(ErrorCode.PROVIDER_TIMEOUT, "no answer in 30 s"))])
    assert s is not None and s.status is F and s.progress == 0.4
    assert (s.error_code, s.error_message) == (ErrorCode.PROVIDER_TIMEOUT, "no answer in 30 s")
    assert s.completed_at == at(1)


@pytest.mark.parametrize("frm", [P, Q, R])
def test_completed_sets_progress_to_one(frm: TaskStatus) -> None:
    s = fold(fold(None, ev("e1", frm, 0, progress=0.3 if frm is R else None)), ev("e2", C, 1))
    assert s.progress == 1.0


# --- fold: terminal states absorb -----------------------------------------------------------


@pytest.mark.parametrize("terminal", [C, F, X])
@pytest.mark.parametrize("late", [P, Q, R])
def test_terminal_absorbs_later_events_of_its_attempt(
    terminal: TaskStatus, late: TaskStatus
) -> None:
    done = fold_all([ev("e1", P, 0), ev("e2", Q, 1), ev("e3", R, 2, progress=0.5),
                     ev("e4", terminal, 3)])
    assert done is not None
    assert fold(done, ev("late", late, 5, progress=0.1 if late is R else None)) is done


def test_terminal_absorbs_older_attempt() -> None:
    done = fold_all([ev("e1", F, 1), ev("e2", Q, 2, attempt=2), ev("e3", C, 3, attempt=2)])
    assert done is not None and fold(done, ev("old", R, 4, attempt=1, progress=0.9)) is done


def test_terminal_straggler_may_still_fill_missing_timestamps_and_progress() -> None:
    # Convergence needs it: had the QUEUED/PROCESSING events come first they would be recorded.
    done = fold_all([ev("e1", P, 0), ev("e4", X, 4)])
    assert done is not None and done.queued_at is None
    later = fold(done, ev("e2", Q, 1))
    assert later.status is X and later.queued_at == at(1) and later.version == done.version + 1
    later = fold(later, ev("e3", R, 2, progress=0.6))
    assert later.status is X and later.started_at == at(2) and later.progress == 0.6
    assert later.completed_at == at(4) and later.last_event_id == "e4"


@pytest.mark.parametrize("first,second", [(C, X), (X, C), (F, C), (C, F), (X, F), (F, X)])
def test_racing_terminals_resolve_by_precedence_in_either_order(
    first: TaskStatus, second: TaskStatus
) -> None:
    base = [ev("e1", R, 0, progress=0.5)]
    a = fold_all([*base, ev("a", first, 1), ev("b", second, 2)])
    b = fold_all([*base, ev("b", second, 2), ev("a", first, 1)])
    winner = C if C in (first, second) else X
    assert a is not None and b is not None
    assert a.status is b.status is winner
    assert dataclasses.replace(a, version=0) == dataclasses.replace(b, version=0)


def test_same_terminal_twice_first_report_wins() -> None:
    base = [ev("e1", R, 0)]
    a = fold_all([*base, ev("c1", C, 5, result="first"), ev("c2", C, 7, result="second")])
    b = fold_all([*base, ev("c2", C, 7, result="second"), ev("c1", C, 5, result="first")])
    assert a is not None and b is not None
    assert a.result == b.result == "first" and a.completed_at == b.completed_at == at(5)


# --- fold: attempts -------------------------------------------------------------------------


def test_older_attempt_never_overwrites_newer() -> None:
    s = fold_all([ev("e1", P, 0), ev("e5", Q, 5, attempt=2)])
    assert s is not None
    for late in (ev("o1", R, 6, attempt=1, progress=0.9), ev("o2", C, 7, attempt=1)):
        assert fold(s, late) is s


def test_older_attempt_only_lowers_created_at() -> None:
    s = fold(None, ev("e5", Q, 5, attempt=2))
    s2 = fold(s, ev("e1", P, 1, attempt=1))
    assert (s2.status, s2.attempt, s2.queued_at, s2.created_at) == (Q, 2, at(5), at(1))
    assert s2.version == s.version + 1


@pytest.mark.parametrize("terminal", [F, C, X, R])
def test_newer_attempt_starts_over(terminal: TaskStatus) -> None:
    old = fold_all([ev("e1", P, 0), ev("e2", Q, 1), ev("e3", R, 2, progress=0.8),
                    ev("e4", terminal, 3, error=Err(ErrorCode.PROVIDER_ERROR, "boom"),
                       result="r1" if terminal is C else None)])
    assert old is not None
    new = fold(old, ev("e5", Q, 10, attempt=2))
    assert (new.status, new.attempt, new.progress, new.version) == (Q, 2, 0.0, old.version + 1)
    assert new.created_at == at(0) and new.queued_at == at(10)
    assert new.started_at is new.completed_at is new.result is new.error_code is None


def test_check_new_attempt() -> None:
    """A retry (attempt n + 1) starts only from PROCESSING(n): every terminal is final."""
    running = fold_all([ev("e1", R, 0)])
    assert running is not None
    check_new_attempt(running, 2)  # a failed attempt retried, or a lease ran out
    with pytest.raises(IllegalNewAttempt, match="next attempt is 2"):
        check_new_attempt(running, 3)
    with pytest.raises(IllegalNewAttempt, match="next attempt is 2"):
        check_new_attempt(running, 1)
    for final in (C, F, X):
        s = fold_all([ev("e1", R, 0), ev("e2", final, 1)])
        assert s is not None
        with pytest.raises(IllegalNewAttempt, match=f"a {final.value} task is final"):
            check_new_attempt(s, 2)
    for waiting in (P, Q):
        s = fold_all([ev("e1", waiting, 0)])
        assert s is not None
        with pytest.raises(IllegalNewAttempt, match="not run yet"):
            check_new_attempt(s, 2)


@pytest.mark.parametrize("current,new", list(itertools.product(TaskStatus, repeat=2)))
@pytest.mark.parametrize("delta", [-1, 0, 1, 2])
def test_check_emit_for_every_status_pair_and_attempt(
        current: TaskStatus, new: TaskStatus, delta: int) -> None:
    """The whole guard, exhaustively: within an attempt the table; the next attempt only as
    QUEUED from PROCESSING (a retry); never an older attempt or one further ahead."""
    state = fold_all([ev("e1", current, 0, attempt=2)])
    assert state is not None
    legal = (delta == 0 and (current, new) in LEGAL_MOVES) or (
        delta == 1 and current is R and new is Q)
    if legal:
        check_emit(state, new, 2 + delta)
    else:
        with pytest.raises((IllegalTransition, IllegalNewAttempt)):
            check_emit(state, new, 2 + delta)
    check_emit(None, new, 1 + max(delta, 0))  # nothing folded yet: anything may come first


def test_a_retry_waits_queued_with_the_last_error_and_ends_failed_only_once() -> None:
    """PROCESSING(1) -> QUEUED(2)+error -> PROCESSING(2) -> QUEUED(3)+error -> PROCESSING(3) ->
    FAILED(3): in any order the fold ends FAILED at attempt 3, and only FAILED(3) is terminal."""
    boom = Err(ErrorCode.PROVIDER_ERROR, "boom")
    events = [ev("a", R, 0), ev("b", Q, 1, attempt=2, error=boom), ev("c", R, 2, attempt=2),
              ev("d", Q, 3, attempt=3, error=boom), ev("e", R, 4, attempt=3),
              ev("f", F, 5, attempt=3, error=boom)]
    waiting = fold_all(events[:2])
    assert waiting is not None and waiting.awaiting_retry and not waiting.is_terminal
    assert (waiting.status, waiting.attempt, waiting.error_code) == (Q, 2, ErrorCode.PROVIDER_ERROR)
    assert waiting.queued_at == at(1) and waiting.started_at is None
    running = fold(waiting, events[2])
    assert not running.awaiting_retry and running.error_code is None and running.status is R
    for order in itertools.permutations(events):
        end = fold_all(order)
        assert end is not None and (end.status, end.attempt, end.error_code) == (
            F, 3, ErrorCode.PROVIDER_ERROR)
        assert end.completed_at == at(5)
    assert [e.status for e in events].count(F) == 1


def test_cancel_during_a_retry_wait_ends_cancelled() -> None:
    boom = Err(ErrorCode.PROVIDER_TIMEOUT, "slow")
    waiting = fold_all([ev("a", R, 0), ev("b", Q, 1, attempt=2, error=boom)])
    assert waiting is not None and waiting.awaiting_retry
    check_emit(waiting, X, 2)  # the API's cancel of a task waiting to retry is legal
    cancelled = fold(waiting, ev("c", X, 2, attempt=2))
    assert cancelled.status is X and cancelled.is_terminal and not cancelled.awaiting_retry
    # The retry's late PROCESSING (a worker that missed the cancel) changes nothing final.
    assert fold(cancelled, ev("d", R, 3, attempt=2)).status is X
    with pytest.raises(IllegalNewAttempt, match="final"):
        check_new_attempt(cancelled, 3)


# --- fold: no backwards move, progress only grows, duplicates --------------------------------


def test_backwards_status_is_ignored_but_its_timestamp_recorded() -> None:
    s = fold_all([ev("e1", P, 0), ev("e3", R, 2, progress=0.3)])
    assert s is not None and s.queued_at is None
    s2 = fold(s, ev("e2", Q, 1))  # arrived late
    assert s2.status is R and s2.queued_at == at(1) and s2.updated_at == at(2)
    assert fold(s2, ev("e0", P, 0)) is s2
    assert fold(s2, ev("e2b", Q, 1.5)) is s2  # a later QUEUED report changes nothing


def test_progress_only_grows() -> None:
    s = fold_all([ev("e1", R, 1, progress=0.3), ev("e2", R, 2, progress=0.5)])
    assert s is not None and s.progress == 0.5
    assert fold(s, ev("old", R, 1.5, progress=0.4)) is s  # lower and older: ignored
    later = fold(s, ev("e3", R, 3, progress=0.4))  # lower but the latest report
    assert later.progress == 0.5 and later.updated_at == at(3) and later.version == s.version + 1


def test_heartbeat_without_progress_refreshes_lease() -> None:
    s = fold_all([ev("e1", R, 1, progress=0.6), ev("hb", R, 100, message="still here")])
    assert s is not None and s.progress == 0.6 and s.updated_at == at(100)
    assert not is_stale(s, at(120), lease_s=30)


def test_duplicates_are_idempotent_with_unchanged_version() -> None:
    history = [ev("e1", P, 0), ev("e2", Q, 1), ev("e3", R, 2, progress=0.5), ev("e4", F, 3),
               ev("e5", Q, 4, attempt=2), ev("e6", C, 5, attempt=2)]
    s = None
    for e in history:
        s = fold(s, e)
        assert fold(s, e) is s
    assert s is not None and fold_all(history, s) is s


# --- event shapes and bad events ------------------------------------------------------------


def test_enveloped_and_flat_events_fold_alike() -> None:
    history = [ev("e1", P, 0), ev("e2", R, 1, progress=0.5), ev("e3", C, 2, result="ok")]
    flat = fold_all(history)
    wrapped = fold_all(wrap(e, task_type="GENERATION") for e in history)
    assert flat is not None and wrapped is not None
    assert wrapped.task_type is TaskType.GENERATION and flat.task_type is None
    assert dataclasses.replace(wrapped, task_type=None) == flat
    assert view_event(wrap(history[0], "video-generation")).task_type is TaskType.VIDEO_GENERATION


def test_timestamps_are_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    e = Flat("e1", "task-1", 1, datetime(2025, 1, 1, 2, tzinfo=plus2), P)
    assert fold(None, e).created_at.tzinfo is UTC


@pytest.mark.parametrize(
    "bad",
    [
        Flat("e1", "task-1", 0, at(0), P),
        Flat("e1", "task-1", True, at(0), P),  # type: ignore[arg-type]
        Flat("e1", "task-1", 1, datetime(2025, 1, 1), P),
        Flat("e1", "task-1", 1, at(0), R, progress=1.5),
        Flat("e1", "task-1", 1, at(0), R, progress=float("nan")),
        Flat("e1", "task-1", 1, at(0), R, progress="0.5"),  # type: ignore[arg-type]
        Flat("", "task-1", 1, at(0), P),
        Flat("e1", "task-1", 1, at(0), "DONE"),  # type: ignore[arg-type]
        Flat("e1", "task-1", 1, at(0), F, error=Err("NOPE", "x")),  # type: ignore[arg-type]
        object(),
    ],
)
def test_bad_events_raise_invalid_status_event(bad: object) -> None:
    with pytest.raises(InvalidStatusEvent):
        fold(None, bad)


def test_event_of_another_task_is_refused() -> None:
    s = fold(None, ev("e1", P, 0))
    with pytest.raises(TaskIdMismatch, match="task-2"):
        fold(s, ev("e2", Q, 1, task_id="task-2"))


# --- helpers --------------------------------------------------------------------------------


def test_fold_all_of_nothing_is_none_and_continues_from_a_state() -> None:
    assert fold_all([]) is None
    s = fold(None, ev("e1", P, 0))
    assert fold_all([], s) is s
    assert fold_all([ev("e2", Q, 1)], s).status is Q  # type: ignore[union-attr]


def test_is_stale_only_for_processing_past_its_lease() -> None:
    running = fold(None, ev("e1", R, 0, progress=0.1))
    assert not is_stale(running, at(30), lease_s=30)
    assert is_stale(running, at(30.5), lease_s=30)
    for status in (P, Q, C, F, X):
        assert not is_stale(fold(None, ev("e1", status, 0)), at(1000), lease_s=30)


def test_state_is_frozen() -> None:
    s = fold(None, ev("e1", P, 0))
    assert isinstance(s, TaskState)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.status = Q  # type: ignore[misc]


@pytest.mark.parametrize("final", [C, X])
def test_newer_attempt_after_completed_or_cancelled_wins_in_either_order(final: TaskStatus) -> None:
    # Letting COMPLETED/CANCELLED swallow attempt 2 here would make the two orders disagree;
    # their finality is enforced by check_new_attempt where attempts are created instead.
    done, retry = ev("e1", final, 1, attempt=1), ev("e2", Q, 2, attempt=2)
    a, b = fold_all([done, retry]), fold_all([retry, done])
    assert a is not None and b is not None
    assert (a.status, a.attempt) == (b.status, b.attempt) == (Q, 2)
