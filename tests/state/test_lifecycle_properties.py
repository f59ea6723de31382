"""Property tests of the fold: any permutation, duplication or replay of a task's events folds to
the same final state (``version`` excluded: it counts applied changes, so it depends on arrival
order), and no single step ever regresses.
"""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.enums import TERMINAL_STATUSES, ErrorCode, TaskStatus
from state.lifecycle import ALLOWED, RANK, TERMINAL_PRECEDENCE, TaskState, fold, fold_all
from state.stops import lease_event_id, stopped_attempt, worker_stop_event_id
from tests.state.test_lifecycle import Err, Flat, at, ev, wrap

P, Q, R = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.PROCESSING
C, F, X = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED

# Bounded so the whole file runs in a few seconds.
BOUNDED = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _error_for(status: TaskStatus, n: int) -> Err | None:
    return Err(ErrorCode.PROVIDER_ERROR, f"failure {n}") if status is F else None


@st.composite
def realistic_history(draw: st.DrawFn) -> list[Flat]:
    """A task's events as the system emits them (issue 17's contract): attempts 1..3. Attempt 1
    optionally starts PENDING, then QUEUED; attempt n > 1 starts with the retry's QUEUED carrying
    attempt n - 1's error (sometimes with a worker-stop id of attempt n - 1: a hard stop or a
    lease time-out), sometimes followed by the lease timer's second QUEUED (resubmitted, same
    error). Then a few PROCESSING reports with growing progress (some without progress). Only
    the last attempt may end, in any terminal or none, sometimes with a racing second terminal;
    its FAILED is sometimes a worker stop's. Clocks tick 0-3 s per event, so equal timestamps
    occur."""
    events: list[Flat] = []
    clock = 0
    attempts = draw(st.integers(1, 3))

    def emit(status: TaskStatus, attempt: int, progress: float | None = None,
             error: Err | None = None) -> None:
        nonlocal clock
        clock += draw(st.integers(0, 3))
        n = len(events)
        result = f"result-{n}" if status is C else None
        events.append(ev(f"e{n:02d}", status, clock, attempt, progress,
                         result=result, error=error or _error_for(status, n), message=f"m{n}"))

    def stop_id(attempt: int) -> str | None:
        return draw(st.sampled_from([None, worker_stop_event_id("task-1", attempt),
                                     lease_event_id("task-1", attempt, "timeout")]))

    def with_id(event_id: str | None) -> None:
        if event_id is not None:
            events[-1] = dataclasses.replace(events[-1], event_id=event_id)

    for attempt in range(1, attempts + 1):
        if attempt == 1:
            if draw(st.booleans()):
                emit(P, attempt)
            if draw(st.booleans()):
                emit(Q, attempt)
        else:  # the retry of attempt - 1: QUEUED with its error, never FAILED
            error = Err(ErrorCode.PROVIDER_ERROR, f"failure of attempt {attempt - 1}")
            emit(Q, attempt, error=error)
            with_id(stop_id(attempt - 1))
            if draw(st.booleans()):  # the lease timer resubmitted it
                emit(Q, attempt, error=error)
                with_id(lease_event_id("task-1", attempt, "queued"))
        reports = draw(st.lists(st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])),
                                max_size=4))
        floor = 0.0
        for p in reports:
            floor = floor if p is None else max(floor, p)
            emit(R, attempt, None if p is None else floor)
        if attempt == 1 and not events:
            emit(Q, attempt)  # every attempt leaves at least one event
        if attempt < attempts and not any(e.attempt == attempt and e.status is R for e in events):
            emit(R, attempt)  # a retry comes from PROCESSING
        if attempt < attempts:
            continue  # an attempt that is retried ends with the next one's QUEUED
        end = draw(st.sampled_from([None, C, F, X]))
        if end is not None:
            emit(end, attempt)
            if end is F:  # sometimes the FAILED of a worker stop (hard stop or lease time-out)
                with_id(stop_id(attempt))
            if draw(st.integers(0, 3)) == 0:  # a racing second terminal
                emit(draw(st.sampled_from([C, F, X])), attempt)
    return events


@st.composite
def adversarial_history(draw: st.DrawFn) -> list[Flat]:
    """Any events at all (distinct ids): every status in every attempt, clashing timestamps,
    newer attempts after COMPLETED, progress reports out of order."""
    size = draw(st.integers(1, 12))
    events = []
    for n in range(size):
        status = draw(st.sampled_from(list(TaskStatus)))
        progress = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.25, 0.5, 1.0])))
        events.append(ev(f"e{n:02d}", status, draw(st.integers(0, 6)), draw(st.integers(1, 3)),
                         progress, result=f"r{n}" if status is C else None,
                         error=_error_for(status, n), message=f"m{n}"))
    return events


histories = st.one_of(realistic_history(), adversarial_history())


@st.composite
def redelivery(draw: st.DrawFn, events: list[Flat]) -> list[Flat]:
    """The same events shuffled, with some delivered more than once."""
    extra = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    return draw(st.permutations(events + extra))


def essence(state: TaskState | None) -> TaskState | None:
    return None if state is None else dataclasses.replace(state, version=0)


@BOUNDED
@given(st.data(), histories)
def test_any_permutation_and_duplication_folds_to_the_same_state(
    data: st.DataObject, events: list[Flat]
) -> None:
    straight = fold_all(events)
    shuffled = fold_all(data.draw(redelivery(events)))
    assert essence(shuffled) == essence(straight)


@BOUNDED
@given(histories)
def test_replay_changes_nothing_not_even_version(events: list[Flat]) -> None:
    state = fold_all(events)
    assert state is not None
    assert fold_all(events, state) is state
    assert fold_all(reversed(events), state) is state


@BOUNDED
@given(histories)
def test_enveloped_shape_folds_like_flat_shape(events: list[Flat]) -> None:
    assert fold_all(wrap(e) for e in events) == fold_all(events)


def _reachable() -> set[tuple[TaskStatus, TaskStatus]]:
    pairs = {(a, b) for a, targets in ALLOWED.items() for b in targets}
    while True:
        more = {(a, d) for (a, b), (c, d) in itertools.product(pairs, pairs) if b is c} - pairs
        if not more:
            return pairs
        pairs |= more


REACHABLE = _reachable()


def assert_no_regression(before: TaskState, after: TaskState) -> None:
    if after is before:
        return
    assert after.version == before.version + 1, "a change bumps version by exactly one"
    assert after != dataclasses.replace(before, version=after.version), "no empty changes"
    assert after.attempt >= before.attempt
    assert after.created_at <= before.created_at
    if after.attempt > before.attempt:
        return  # a new attempt starts over
    assert RANK[after.status] >= RANK[before.status]
    assert after.progress >= before.progress
    if before.queued_at is not None:
        assert after.queued_at is not None and after.queued_at <= before.queued_at
    if before.started_at is not None:
        assert after.started_at is not None and after.started_at <= before.started_at
    if after.status is not before.status:
        # Within an attempt the fold only follows the table (maybe skipping steps), or settles a
        # race between two terminals by precedence.
        if before.status in TERMINAL_STATUSES:
            assert TERMINAL_PRECEDENCE[after.status] > TERMINAL_PRECEDENCE[before.status]
        else:
            assert (before.status, after.status) in REACHABLE
    elif before.status in TERMINAL_STATUSES and after.last_event_id != before.last_event_id:
        assert after.completed_at is not None and before.completed_at is not None
        assert after.completed_at <= before.completed_at, "first terminal report wins"


@BOUNDED
@given(st.data(), histories)
def test_no_step_ever_regresses(data: st.DataObject, events: list[Flat]) -> None:
    state: TaskState | None = None
    for event in data.draw(redelivery(events)):
        after = fold(state, event)
        if state is None:
            assert after.version == 1
        else:
            assert_no_regression(state, after)
        state = after


@BOUNDED
@given(realistic_history())
def test_a_realistic_history_has_one_failed_at_most_and_it_is_the_end(events: list[Flat]) -> None:
    """Issue 17: FAILED only at the end. No attempt but the last has a FAILED; no prefix of the
    history folds to a terminal before the last attempt; a later attempt's QUEUED is a retry
    wait that shows the previous attempt's error."""
    failed = [e for e in events if e.status is F]
    last = max(e.attempt for e in events)
    assert all(e.attempt == last for e in failed)
    for cut in range(1, len(events) + 1):
        state = fold_all(events[:cut])
        assert state is not None
        if state.is_terminal:
            assert state.attempt == last
        if state.status is Q and state.attempt > 1:
            assert state.awaiting_retry and state.error_code is ErrorCode.PROVIDER_ERROR


@BOUNDED
@given(realistic_history())
def test_realistic_outcome_is_the_last_attempts(events: list[Flat]) -> None:
    state = fold_all(events)
    assert state is not None
    last = max(e.attempt for e in events)
    assert state.attempt == last
    ends = {e.status for e in events if e.attempt == last and e.status in TERMINAL_STATUSES}
    if ends:
        assert state.status is max(ends, key=TERMINAL_PRECEDENCE.__getitem__)
        assert state.completed_at is not None
        if state.status is C:
            assert state.progress == 1.0 and state.result is not None
        if state.status is F:
            assert state.error_code is ErrorCode.PROVIDER_ERROR
    else:
        assert not state.is_terminal and state.completed_at is None
    assert state.created_at == min(e.occurred_at for e in events)
    started = [e.occurred_at for e in events if e.attempt == last and e.status is R]
    assert state.started_at == (min(started) if started else None)
    assert at(0) <= state.created_at


@given(histories.flatmap(lambda events: st.tuples(st.just(events), redelivery(events))))
@BOUNDED
def test_stopped_attempts_are_exactly_the_attempts_with_a_worker_stop(
    pair: tuple[list[Flat], list[Flat]],
) -> None:
    """The poison rule's memory: every attempt a worker stop ended (its FAILED, or the next
    attempt's QUEUED), in any order, however many newer attempts followed, and nothing else."""
    events, delivered = pair
    expected = {stopped_attempt(e.task_id, e.attempt, e.status, e.event_id) for e in events} - {None}
    state = fold_all(delivered)
    assert state is not None and state.stopped_attempts == expected
