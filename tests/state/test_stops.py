"""The poison-task rule (pure): which status events are worker stops, and what a stop decides,
for every stop count, attempt and code the retry policy knows."""

from __future__ import annotations

import itertools
import uuid

import pytest

from schemas.enums import ErrorCode, TaskStatus
from state.retry import RetryPolicy, decide
from state.stops import (
    STOPS_TO_FAIL,
    decide_after_stop,
    is_stop_event,
    lease_event_id,
    stopped_attempt,
    stops_from_header,
    worker_stop_event_id,
)

POLICY = RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_max_s=60.0, jitter=0.0)


def test_a_stop_is_its_attempts_failed_or_the_next_attempts_queued() -> None:
    """A stop that ends the task is FAILED of the stopped attempt; one that is retried is QUEUED
    of the next attempt with the stopped attempt's id (issue 17: FAILED is final). Every other
    status, attempt, task or id is no stop."""
    task, other = str(uuid.uuid4()), str(uuid.uuid4())
    for attempt, status in itertools.product((1, 2, 3), TaskStatus):
        for event_id in (worker_stop_event_id(task, attempt), lease_event_id(task, attempt, "timeout")):
            assert stopped_attempt(task, attempt, status, event_id) == (
                attempt if status is TaskStatus.FAILED else None)
            assert stopped_attempt(task, attempt + 1, status, event_id) == (
                attempt if status is TaskStatus.QUEUED else None)
            assert is_stop_event(task, attempt, status, event_id) == (status is TaskStatus.FAILED)
            assert not is_stop_event(other, attempt, status, event_id)  # another task's id
            assert not is_stop_event(other, attempt + 1, status, event_id)
            assert not is_stop_event(task, attempt + 2, status, event_id)  # another attempt's id
            if attempt > 1:
                assert not is_stop_event(task, attempt - 1, status, event_id)
        for step in ("retry", "queued"):  # the lease's other outputs are no stops
            assert not is_stop_event(task, attempt, status, lease_event_id(task, attempt, step))
            assert not is_stop_event(task, attempt + 1, status, lease_event_id(task, attempt, step))
        assert not is_stop_event(task, attempt, status, str(uuid.uuid4()))


@pytest.mark.parametrize("code", list(ErrorCode))
@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
@pytest.mark.parametrize("stops", [1, 2, 3])
def test_the_second_stop_fails_the_task_and_the_first_follows_the_retry_policy(
        code: ErrorCode, attempt: int, stops: int) -> None:
    stop = decide_after_stop(code, attempt, stops, POLICY, seed="t")
    if stops >= STOPS_TO_FAIL:
        assert stop.poisoned and not stop.decision.retry
        assert stop.code is ErrorCode.PROVIDER_ERROR
        assert stop.message("ran past its 5s time limit") == (
            "the task stopped a worker twice: ran past its 5s time limit")
    else:
        assert not stop.poisoned and stop.code is code
        assert stop.decision == decide(code, attempt, POLICY, seed="t")
        assert stop.message("ran past its 5s time limit") == "ran past its 5s time limit"


def test_a_stop_count_must_include_this_stop() -> None:
    with pytest.raises(ValueError):
        decide_after_stop(ErrorCode.PROVIDER_TIMEOUT, 1, 0, POLICY)


@pytest.mark.parametrize("value, expected", [
    (None, 0), ("", 0), ("0", 0), ("1", 1), ("2", 2), ("-3", 0), ("x", 0), ("1.5", 0)])
def test_the_stops_header_is_read_leniently(value: str | None, expected: int) -> None:
    assert stops_from_header(value) == expected
