"""Supervised execution on the real broker: a runaway task cannot take the worker down.

Each worker here is the real :class:`~gpu_consumers.runtime.Worker` with its default
``execution="supervised"``: the handlers (``tests/gpu_consumers/runaway.py``) run in its child
process. Shown: a handler that never checks its cancel token is killed after the time limit plus
grace, a user cancel of it takes effect within the cancel grace, a handler that allocates without
bound is killed at the memory ceiling, a handler process that dies is replaced; the worker stays
healthy and serves the next task, in a fresh child, every time. A task that stops a worker twice
ends FAILED/PROVIDER_ERROR after two attempts (the poison rule; the lease path is in
tests/processors/test_lifecycle_app.py). A task over its admission budget is refused before any
handler runs. Waits are deadlines that allow for a loaded machine, never timing assertions.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from producers.submit import TaskProducer
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.kafka_settings import KafkaSettings
from state.stops import worker_stop_event_id
from tests.gpu_consumers.runaway import Runaway
from tests.gpu_consumers.runtime_helpers import (
    TYPE,
    Running,
    Scripted,
    request_cancel,
    submit,
    worker_settings,
)
from tests.gpu_consumers.test_runtime import kafka  # noqa: F401  (the topics, created)
from tests.kafka_helpers import StatusLog

pytestmark = pytest.mark.integration

TIME_LIMIT_S, GRACE_S, CANCEL_GRACE_S = 3.0, 1.0, 1.0
# Generous allowance on top of a bound the worker promises: a fresh handler process imports the
# runtime on a shared 2-core machine.
SLACK_S = 90.0
NEVER_S = 900  # how long the runaway handler would run if nothing stopped it


@pytest.fixture
def status_log(kafka: KafkaSettings):
    log = StatusLog(kafka, deadline_s=TIME_LIMIT_S + GRACE_S + SLACK_S)
    yield log
    log.close()


def supervised(kafka: KafkaSettings, results_dir: Any, **overrides: Any) -> Worker:
    settings = worker_settings(kafka, **{
        "execution": "supervised", "task_timeout_s": TIME_LIMIT_S, "timeout_grace_s": GRACE_S,
        "cancel_grace_s": CANCEL_GRACE_S, "retry_max_attempts": 1,
        # Every progress report is an event: a warm handler process reports its first progress
        # within the default interval of PROCESSING, which would drop it (the cancel test waits
        # for it to know the handler is under way).
        "progress_interval_s": 0.0, **overrides})
    return Worker(kafka, settings, {TYPE: {"test": Runaway}}, FileStore(results_dir), None, None)


def served_by_a_fresh_child(log: StatusLog, task_id: str, killed_pid: int | None) -> int:
    """The task COMPLETED; return the pid of the handler process that ran it."""
    state = log.state(task_id)
    assert state is not None and state.status is TaskStatus.COMPLETED, state
    pid = int(state.result.result_text)
    assert pid != killed_pid
    return pid


def test_a_handler_that_ignores_its_token_is_killed_and_the_worker_serves_the_next_task(
        kafka, status_log, results_dir):
    worker = supervised(kafka, results_dir)
    running = Running(worker)
    try:
        # One at a time: records on different partitions may be taken in either order.
        [first] = submit(kafka, "ok")
        status_log.wait_terminal(first)
        [runaway] = submit(kafka, f"ignore:{NEVER_S}")
        status_log.wait_terminal(runaway)  # within time limit + grace (+ slack), not NEVER_S
        [after] = submit(kafka, "ok")
        status_log.wait_terminal(after)
        pid = served_by_a_fresh_child(status_log, first, None)
        served_by_a_fresh_child(status_log, after, pid)  # the killed child was replaced
        state = status_log.state(runaway)
        assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.PROVIDER_TIMEOUT)
        assert "did not stop within" in state.error_message and "killed" in state.error_message
        assert state.last_event_id == worker_stop_event_id(runaway, 1)  # a worker stop
        assert worker.healthy and worker.supervisor.killed == 1
    finally:
        worker.stop(now=True)
    assert running.join().failed == 1


def test_a_user_cancel_of_a_handler_that_ignores_it_takes_effect(kafka, status_log, results_dir):
    worker = supervised(kafka, results_dir, task_timeout_s=NEVER_S)
    running = Running(worker)
    try:
        [runaway] = submit(kafka, f"ignore:{NEVER_S}")
        status_log.wait_running(runaway)
        request_cancel(kafka, runaway)
        # Within the cancel grace (+ slack): the time limit here is NEVER_S.
        status_log.wait_terminal(runaway)
        assert status_log.state(runaway).status is TaskStatus.CANCELLED
        [after] = submit(kafka, "ok")
        status_log.wait_terminal(after)
        served_by_a_fresh_child(status_log, after, None)
        assert worker.healthy and worker.supervisor.killed == 1
    finally:
        worker.stop(now=True)
    stats = running.join()
    assert (stats.cancelled, stats.completed) == (1, 1)


def test_a_handler_that_allocates_without_bound_is_stopped_by_the_memory_ceiling(
        kafka, status_log, results_dir):
    ceiling = 300 * 2**20  # the handler would go on to 1.5 GiB: the test's own bound
    worker = supervised(kafka, results_dir, task_timeout_s=NEVER_S, max_rss_bytes=ceiling)
    running = Running(worker)
    try:
        hog, after = submit(kafka, "alloc:1536", "ok")
        status_log.wait_terminal(hog, after)
        state = status_log.state(hog)
        assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.PROVIDER_ERROR)
        assert "memory ceiling of 300 MiB" in state.error_message
        served_by_a_fresh_child(status_log, after, None)
        assert worker.healthy and worker.supervisor.killed == 1
    finally:
        worker.stop(now=True)
    assert running.join().completed == 1


@pytest.mark.parametrize("prompt", [f"ignore:{NEVER_S}", "abort"])
def test_a_task_that_stops_a_worker_twice_ends_failed_instead_of_going_on(
        kafka, status_log, results_dir, prompt):
    """Three attempts allowed, yet the second stop (time limit + kill, or the process dying
    on its own) ends the task: it is not handed to a third attempt."""
    worker = supervised(kafka, results_dir, retry_max_attempts=3)
    running = Running(worker)
    try:
        poison, after = submit(kafka, prompt, "ok")
        status_log.wait_terminal(after)
        status_log.wait_terminal(poison)
        # Attempt 1's stop is retried (QUEUED for attempt 2, its stop id), attempt 2's ends it:
        # one FAILED, at the end (issue 17).
        failures = [e for e in status_log.events[poison] if e.status is TaskStatus.FAILED]
        assert [(e.envelope.attempt, e.error.retryable) for e in failures] == [(2, False)]
        assert [e.envelope.event_id for e in failures] == [worker_stop_event_id(poison, 2)]
        [retry] = [e for e in status_log.events[poison] if e.status is TaskStatus.QUEUED and e.error]
        assert (retry.envelope.attempt, retry.error.retryable) == (2, True)
        assert retry.envelope.event_id == worker_stop_event_id(poison, 1)
        state = status_log.state(poison)
        assert (state.attempt, state.error_code) == (2, ErrorCode.PROVIDER_ERROR)
        assert state.error_message.startswith("the task stopped a worker twice: ")
        if prompt == "abort":  # as "terminate called without an active exception" ends
            assert "its process died (killed by SIGABRT)" in state.error_message
        assert state.stopped_attempts == {1, 2}
        served_by_a_fresh_child(status_log, after, None)
        assert worker.healthy
    finally:
        worker.stop(now=True)
    running.join()


def test_a_generation_over_the_offline_budget_is_refused_before_any_handler_runs(
        kafka, status_log, results_dir):
    handler = Scripted()
    settings = worker_settings(kafka, types=[TaskType.GENERATION], model_profile="offline")
    worker = Worker(kafka, settings, {TaskType.GENERATION: {"test": lambda: handler}},
                    FileStore(results_dir), None, None)
    with TaskProducer(kafka) as producer:
        huge = producer.submit(TaskType.GENERATION, {
            "prompt": "a lighthouse", "width": 4096, "height": 4096,
            "provider_config": {"num_inference_steps": 150}})
    stats = Running(worker, max_tasks=1).join(TIME_LIMIT_S + SLACK_S)
    status_log.wait_terminal(huge)
    state = status_log.state(huge)
    assert (state.status, state.error_code, state.attempt) == (
        TaskStatus.FAILED, ErrorCode.INVALID_INPUT, 1)
    assert "offline profile admits at most" in state.error_message
    assert handler.runs == [] and stats.failed == 1
