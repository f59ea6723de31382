"""The lease decision (pure): when a PROCESSING task times out, when it is retried, and what the
outputs are; and the lease book's view of freshness."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from processors.leases import (
    LeaseBook,
    Retry,
    TimeOut,
    is_lease_failure,
    is_lease_retry_wait,
    lease_event_id,
    lost_record_event,
    needs_watching,
    resolve,
    retry_events,
    timeout_event,
)
from schemas.enums import ErrorCode, TaskStatus, TaskType
from state.lifecycle import fold, fold_all
from state.retry import RetryPolicy
from state.stops import worker_stop_event_id
from tests.processors.scripted import T0, status, submitted

POLICY = RetryPolicy(max_attempts=3, backoff_base_s=2.0, backoff_max_s=60.0, jitter=0.0)
LEASE_S = 60.0


def processing(attempt: int = 1, at_s: float = 0.0, task_id: str | None = None):
    task_id = task_id or str(uuid.uuid4())
    at = T0 + timedelta(seconds=at_s)
    return fold_all([status(task_id, TaskStatus.QUEUED, at - timedelta(seconds=1), attempt=attempt),
                     status(task_id, TaskStatus.PROCESSING, at, attempt=attempt, progress=0.3)])


def after(seconds: float):
    return T0 + timedelta(seconds=seconds)


def timed_out(state):
    """The state once the lease's time-out event (QUEUED for a retry, else FAILED) was folded."""
    action = resolve(state, state.updated_at + timedelta(seconds=LEASE_S + 1), LEASE_S, POLICY)
    assert isinstance(action, TimeOut)
    return fold(state, timeout_event(action)), action


def test_a_fresh_processing_task_is_left_alone() -> None:
    assert resolve(processing(), after(LEASE_S), LEASE_S, POLICY) is None  # not older than the lease


def test_a_stale_task_times_out_retryably_with_a_deterministic_event() -> None:
    """A retryable time-out is not FAILED (final): QUEUED for attempt 2 with the error."""
    state = processing()
    action = resolve(state, after(LEASE_S + 0.001), LEASE_S, POLICY)
    assert isinstance(action, TimeOut) and action.decision.retry
    event = timeout_event(action)
    assert event.status is TaskStatus.QUEUED and event.envelope.attempt == 2
    assert event.error.code is ErrorCode.PROVIDER_TIMEOUT and event.error.retryable
    assert "runs at" in event.message
    assert event.envelope.occurred_at == state.updated_at + timedelta(seconds=LEASE_S)
    # Judged again later (after a crash, by another worker): the very same event.
    again = timeout_event(resolve(state, after(10 * LEASE_S), LEASE_S, POLICY))
    assert again == event
    assert event.envelope.event_id == lease_event_id(state.task_id, 1, "timeout")


@pytest.mark.parametrize("st", [TaskStatus.QUEUED, TaskStatus.COMPLETED, TaskStatus.CANCELLED])
def test_only_processing_tasks_have_a_lease(st: TaskStatus) -> None:
    task_id = str(uuid.uuid4())
    state = fold(None, status(task_id, st, T0, result=st is TaskStatus.COMPLETED))
    assert resolve(state, after(100 * LEASE_S), LEASE_S, POLICY) is None
    assert not needs_watching(state, POLICY)


def test_the_retry_waits_for_the_backoff_then_starts_the_next_attempt() -> None:
    failed, action = timed_out(processing())
    assert (failed.status, failed.attempt, failed.error_code) == (
        TaskStatus.QUEUED, 2, ErrorCode.PROVIDER_TIMEOUT)
    assert failed.awaiting_retry and not failed.is_terminal
    assert is_lease_failure(failed) and is_lease_retry_wait(failed) and needs_watching(failed, POLICY)
    due = failed.updated_at + timedelta(seconds=POLICY.backoff_base_s)
    assert resolve(failed, due - timedelta(milliseconds=1), LEASE_S, POLICY) is None
    retry = resolve(failed, due, LEASE_S, POLICY)
    assert isinstance(retry, Retry) and retry.decision.next_attempt == 2

    original = submitted(failed.task_id)
    record, queued = retry_events(retry, original)
    assert record.envelope.task_id == failed.task_id and record.envelope.attempt == 2
    assert record.params == original.params and record.envelope.task_type is TaskType.GENERATION
    assert queued.status is TaskStatus.QUEUED and queued.envelope.attempt == 2
    assert record.envelope.event_id == lease_event_id(failed.task_id, 2, "retry")
    assert queued.envelope.event_id == lease_event_id(failed.task_id, 2, "queued")
    assert retry_events(retry, original) == (record, queued)  # deterministic
    resubmitted = fold(failed, queued)
    assert (resubmitted.status, resubmitted.attempt) == (TaskStatus.QUEUED, 2)
    assert resubmitted.error_code is ErrorCode.PROVIDER_TIMEOUT  # still says why it runs again
    assert not needs_watching(resubmitted, POLICY)  # resubmitted once: now a worker's
    assert resolve(resubmitted, after(1e6), LEASE_S, POLICY) is None


def test_a_cancel_during_the_retry_wait_stops_the_resubmission() -> None:
    waiting, _ = timed_out(processing())
    cancelled = fold(waiting, status(waiting.task_id, TaskStatus.CANCELLED,
                                     waiting.updated_at + timedelta(seconds=0.5), attempt=2))
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.attempt == 2
    assert not needs_watching(cancelled, POLICY)
    assert resolve(cancelled, after(1e6), LEASE_S, POLICY) is None


def test_a_workers_retry_wait_is_resubmitted_only_a_lease_after_its_backoff() -> None:
    """The worker that wrote QUEUED(2) runs attempt 2 itself after the back-off; if the task is
    still QUEUED a lease later, that worker is gone and the lease timer resubmits the record."""
    task_id = str(uuid.uuid4())
    waiting = fold(processing(task_id=task_id),
                   status(task_id, TaskStatus.QUEUED, after(1), attempt=2,
                          error=ErrorCode.PROVIDER_ERROR))
    assert waiting.awaiting_retry and needs_watching(waiting, POLICY)
    assert not is_lease_retry_wait(waiting)
    due = after(1) + timedelta(seconds=POLICY.backoff_base_s + LEASE_S)
    assert resolve(waiting, due - timedelta(milliseconds=1), LEASE_S, POLICY) is None
    retry = resolve(waiting, due, LEASE_S, POLICY)
    assert isinstance(retry, Retry) and retry.due_at == due
    record, queued = retry_events(retry, submitted(task_id))
    assert record.envelope.attempt == queued.envelope.attempt == 2
    # The worker did run it: PROCESSING(2) ends the watch.
    running = fold(waiting, status(task_id, TaskStatus.PROCESSING, after(3), attempt=2))
    assert running.status is TaskStatus.PROCESSING  # watched for its lease again, not the wait
    assert resolve(running, after(4), LEASE_S, POLICY) is None


def test_a_retry_wait_with_no_task_record_ends_failed_once() -> None:
    waiting, _ = timed_out(processing())
    retry = resolve(waiting, after(1e6), LEASE_S, POLICY)
    assert isinstance(retry, Retry)
    event = lost_record_event(retry)
    assert (event.status, event.envelope.attempt) == (TaskStatus.FAILED, 2)
    assert event.error.code is ErrorCode.PROVIDER_TIMEOUT and not event.error.retryable
    assert event == lost_record_event(retry)  # deterministic id and time
    ended = fold(waiting, event)
    assert ended.status is TaskStatus.FAILED and not needs_watching(ended, POLICY)


def test_the_last_allowed_attempt_fails_for_good() -> None:
    state = processing(attempt=POLICY.max_attempts)
    failed, action = timed_out(state)
    assert not action.decision.retry and not timeout_event(action).error.retryable
    assert (failed.status, failed.attempt) == (TaskStatus.FAILED, POLICY.max_attempts)
    assert is_lease_failure(failed) and not needs_watching(failed, POLICY)
    assert resolve(failed, after(10_000), LEASE_S, POLICY) is None


def test_a_workers_final_failure_is_left_alone() -> None:
    task_id = str(uuid.uuid4())
    state = fold(processing(task_id=task_id),
                 status(task_id, TaskStatus.FAILED, after(1), error=ErrorCode.PROVIDER_ERROR))
    assert not is_lease_failure(state) and not needs_watching(state, POLICY)
    assert resolve(state, after(10_000), LEASE_S, POLICY) is None  # FAILED is final


def test_a_late_completion_beats_the_lease_failure() -> None:
    """The final time-out (FAILED) races the slow worker's COMPLETED: the result wins."""
    failed, _ = timed_out(processing(attempt=POLICY.max_attempts))
    assert failed.status is TaskStatus.FAILED
    done = fold(failed, status(failed.task_id, TaskStatus.COMPLETED, after(LEASE_S + 5), result=True,
                               attempt=POLICY.max_attempts))
    assert done.status is TaskStatus.COMPLETED
    assert resolve(done, after(10_000), LEASE_S, POLICY) is None


def test_a_second_lease_time_out_is_a_poisoned_task() -> None:
    """Time out, retry, time out: a lease time-out means the worker is gone (a worker stop), so
    the second one ends the task FAILED/PROVIDER_ERROR, before max_attempts, with the reason."""
    state, attempts = processing(), []
    for _ in range(10):
        attempts.append(state.attempt)
        state, _ = timed_out(state)
        retry = resolve(state, after(1e6), LEASE_S, POLICY)
        if retry is None:
            break
        _, queued = retry_events(retry, submitted(state.task_id))
        state = fold(fold(state, queued), status(state.task_id, TaskStatus.PROCESSING,
                                                 queued.envelope.occurred_at, attempt=queued.envelope.attempt))
    assert attempts == [1, 2]
    assert state.status is TaskStatus.FAILED and state.error_code is ErrorCode.PROVIDER_ERROR
    assert state.error_message.startswith("the task stopped a worker twice: no report from the")
    assert state.stopped_attempts == {1, 2} and not needs_watching(state, POLICY)


def test_the_retry_after_a_lease_time_out_carries_the_stop_count() -> None:
    failed, _ = timed_out(processing())
    retry = resolve(failed, after(1e6), LEASE_S, POLICY)
    assert isinstance(retry, Retry) and retry.stops == 1


def test_a_lease_time_out_after_a_hard_stop_is_the_second_stop() -> None:
    """Attempt 1 ended by the worker's hard stop (its deterministic event id), attempt 2's worker
    vanished: the lease ends the task instead of starting attempt 3."""
    task_id = str(uuid.uuid4())
    hard = status(task_id, TaskStatus.QUEUED, after(1), error=ErrorCode.PROVIDER_TIMEOUT,
                  event_id=worker_stop_event_id(task_id, 1), attempt=2)
    state = fold_all([hard], processing(task_id=task_id))
    assert state.stopped_attempts == {1} and state.awaiting_retry
    second = fold_all([status(task_id, TaskStatus.PROCESSING, after(6), attempt=2)], state)
    failed, action = timed_out(second)
    assert action.stop.poisoned and not action.decision.retry
    assert (failed.status, failed.error_code) == (TaskStatus.FAILED, ErrorCode.PROVIDER_ERROR)
    assert resolve(failed, after(1e7), LEASE_S, POLICY) is None


def test_max_attempts_still_bounds_lease_retries() -> None:
    """With a single attempt allowed, the first time-out is final (and not a poisoned task)."""
    one = RetryPolicy(max_attempts=1, backoff_base_s=2.0, backoff_max_s=60.0, jitter=0.0)
    action = resolve(processing(), after(LEASE_S + 1), LEASE_S, one)
    assert isinstance(action, TimeOut) and not action.decision.retry and not action.stop.poisoned
    assert timeout_event(action).error.code is ErrorCode.PROVIDER_TIMEOUT


# --------------------------------------------------------------------------- the lease book


def test_leases_are_judged_only_on_a_view_that_is_complete() -> None:
    book = LeaseBook(lambda t: LEASE_S, POLICY)
    state = processing()
    book.observe(0, state)
    late = after(LEASE_S + 30)
    book.note_end_offsets(late, {0: 100, 1: 5})
    # Partition 0 has records the app has not folded yet (committed 90 < 100): maybe a progress
    # report of this very task. Nothing is judged there.
    assert book.fresh_as_of({0: 90, 1: 5}) == {1: late}
    assert book.due(book.fresh_as_of({0: 90, 1: 5})) == []
    # Once everything written before ``late`` is folded, the lease has run out.
    fresh = book.fresh_as_of({0: 100, 1: 5})
    assert fresh == {0: late, 1: late}
    [action] = book.due(fresh)
    assert isinstance(action, TimeOut) and action.state == state


def test_an_action_is_repeated_only_once_its_output_should_have_been_folded() -> None:
    book = LeaseBook(lambda t: LEASE_S, POLICY)
    book.observe(0, processing())
    book.note_end_offsets(after(100), {0: 10})
    [action] = book.due(book.fresh_as_of({0: 10}))
    book.sent(action, after(101))
    assert book.due(book.fresh_as_of({0: 10})) == []  # the view predates the output
    book.note_end_offsets(after(102), {0: 11})
    assert book.due(book.fresh_as_of({0: 10})) == []  # still folding it
    assert len(book.due(book.fresh_as_of({0: 11}))) == 1  # folded, yet still PROCESSING: again


def test_the_book_follows_states_and_partitions() -> None:
    book = LeaseBook(lambda t: {TaskType.VIDEO_GENERATION: 10 * LEASE_S}.get(t, LEASE_S), POLICY)
    running = processing()
    book.observe(1, running)
    assert len(book) == 1
    book.observe(1, fold(running, status(running.task_id, TaskStatus.COMPLETED, after(5), result=True)))
    assert len(book) == 0
    book.observe(1, running)
    book.keep_partitions([0])  # partition 1 went to another worker
    assert len(book) == 0
    video = fold_all([status(str(uuid.uuid4()), TaskStatus.PROCESSING, T0,
                             task_type=TaskType.VIDEO_GENERATION)])
    book.observe(0, video)
    book.note_end_offsets(after(2 * LEASE_S), {0: 0})
    assert book.due(book.fresh_as_of({0: None})) == []  # video's own, longer lease
