"""The worker runtime against the real broker, with tiny scripted handlers.

Workers run in threads in burst mode (or until ``stop()``); every assertion is on counters, the
status topic folded with ``state.lifecycle.fold_all``, the DLQ, committed offsets and the
results folder, never on log text. Waits are conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from PIL import Image

from gpu_consumers.cli import worker as worker_command
from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from producers.submit import TaskProducer
from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus
from schemas.events import StatusChanged
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import (
    DEADLINE_S,
    RELEASE,
    TYPE,
    GatedStore,
    Running,
    Scripted,
    committed,
    files_of,
    make_worker,
    request_cancel,
    submit,
    worker_settings,
)
from tests.kafka_helpers import StatusLog, read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    # Two partitions keep topic creation and group joins quick; the sharing test takes more.
    settings = kafka_settings.model_copy(update={"partitions": 2})
    ensure_topics(settings)
    return settings


@pytest.fixture
def status_log(kafka: KafkaSettings):
    log = StatusLog(kafka)
    yield log
    log.close()


@pytest.fixture(autouse=True)
def _release_hung_handlers():
    RELEASE.clear()
    yield
    RELEASE.set()


# --------------------------------------------------------------------------- cases


def test_a_task_completes_with_its_result_and_one_commit(kafka, status_log, results_dir, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (100, 150, 200)).save(image)
    fetcher = InputFetcher(InputSettings(allowed_file_roots=[tmp_path]))
    worker = make_worker(kafka, ImageAdjusterHandler(), FileStore(results_dir), fetcher=fetcher)
    [task_id] = submit(kafka, "warmer", base_image_url=image.as_uri())

    stats = Running(worker, max_tasks=1).join()

    assert (stats.completed, stats.failed, stats.retried, stats.handled) == (1, 0, 0, 1)
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert state.status is TaskStatus.COMPLETED and state.attempt == 1 and state.progress == 1.0
    result = state.result
    assert result.result_image_url == result.output_urls[0] and result.result_image_url.startswith("file://")
    assert files_of(results_dir, task_id) and Image.open(files_of(results_dir, task_id)[0]).size == (12, 10)
    meta = result.metadata
    assert (meta.model, meta.provider, meta.width, meta.height, meta.content_type) == (
        "numpy-color-adjust+keywords", "classical", 12, 10, "image/png")  # the prompt "warmer" read by the rules
    assert meta.timing_ms >= 0
    statuses = [e.status for e in status_log.events[task_id]]
    assert statuses[:3] == [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.PROCESSING]
    assert statuses[-1] is TaskStatus.COMPLETED and len(status_log.terminals(task_id)) == 1
    assert {e.worker_id for e in status_log.events[task_id][2:]} == {worker.worker_id}
    assert committed(kafka) == 1


def test_progress_is_throttled_to_two_events_a_second_and_only_grows(kafka, status_log, results_dir):
    handler = Scripted()
    worker = make_worker(kafka, handler, FileStore(results_dir))  # progress_interval_s=0.5
    [task_id] = submit(kafka, "steps:50:0.025")  # 1.25 s of steps, fifty progress calls

    assert Running(worker, max_tasks=1).join().completed == 1

    status_log.wait_terminal(task_id)
    processing = [e for e in status_log.events[task_id] if e.status is TaskStatus.PROCESSING]
    values = [e.progress for e in processing]
    assert values[0] == 0.0 and len(values) >= 3
    assert values == sorted(values) and len(set(values)) == len(values)
    times = [e.envelope.occurred_at.timestamp() for e in processing]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.5 - 0.01  # at most 2 per second
    assert len(values) <= 1 + 1.25 / 0.5


def _stamp_status_records_at_append(kafka: KafkaSettings) -> None:
    """Switch this test's status topic to LogAppendTime and wait until the broker reports it."""
    admin, topic = AdminClient(kafka.client_config()), kafka.topics.status
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=10)

    def applied() -> bool:
        [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        return future.result(timeout=10)["message.timestamp.type"].value == "LogAppendTime"

    wait_for(applied, "LogAppendTime on the status topic")


def _appended_at(kafka: KafkaSettings, task_ids: list[str]) -> dict[str, list[tuple[TaskStatus, int]]]:
    """(status, broker append time in ms) of every status record of ``task_ids``, in order, read
    until each has its terminal status. The status topic must use LogAppendTime: records the
    broker appended in one batch then carry the same time."""
    codec, seen = EventCodec(), {t: [] for t in task_ids}
    consumer = Consumer({**kafka.client_config(), "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([kafka.topics.status])

    def ended() -> bool:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            kind, at = msg.timestamp()
            assert kind == TIMESTAMP_LOG_APPEND_TIME
            event = codec.decode(msg.value(), expect=StatusChanged)
            if event.envelope.task_id in seen:
                seen[event.envelope.task_id].append((event.status, at))
        return all(s and s[-1][0] is TaskStatus.COMPLETED for s in seen.values())

    try:
        wait_for(ended, "both tasks' COMPLETED on the status topic")
    finally:
        consumer.close()
    return seen


def test_processing_lingers_to_travel_with_a_quick_tasks_terminal_status(kafka, results_dir):
    _stamp_status_records_at_append(kafka)
    worker = make_worker(kafka, Scripted(), FileStore(results_dir), status_linger_ms=300)
    quick, slow = submit(kafka, "steps:1:0.05", "steps:6:0.25")  # 50 ms, then 1.5 s of steps

    assert Running(worker, max_tasks=2).join().completed == 2

    appended = _appended_at(kafka, [quick, slow])
    [(_, processing)], [(_, completed)] = (
        [(s, at) for s, at in appended[quick] if s is status][:1]
        for status in (TaskStatus.PROCESSING, TaskStatus.COMPLETED))
    assert processing == completed  # one produce request: the broker appended them together
    slow_processing = next(at for s, at in appended[slow] if s is TaskStatus.PROCESSING)
    slow_completed = appended[slow][-1][1]
    assert slow_completed - slow_processing >= 1000  # a long task's start is not held to its end


def test_retryable_failures_are_retried_as_new_attempts(kafka, status_log, results_dir):
    handler = Scripted()
    worker = make_worker(kafka, handler, FileStore(results_dir), retry_max_attempts=3)
    recovers, never = submit(kafka, "fail:PROVIDER_ERROR:1", "fail:STORAGE_ERROR:99")

    stats = Running(worker, max_tasks=2).join()

    assert (stats.completed, stats.failed, stats.retried) == (1, 1, 1 + 2)
    status_log.wait_terminal(recovers, never)
    ok = status_log.state(recovers)
    assert ok.status is TaskStatus.COMPLETED and ok.attempt == 2
    own = [(e.envelope.attempt, e.status, e.error and e.error.retryable)
           for e in status_log.events[recovers] if e.envelope.source == "worker"]
    # Issue 17: a retry is QUEUED for the next attempt with the error, never FAILED.
    assert own == [(1, TaskStatus.PROCESSING, None), (2, TaskStatus.QUEUED, True),
                   (2, TaskStatus.PROCESSING, None), (2, TaskStatus.COMPLETED, None)]
    bad = status_log.state(never)
    assert (bad.status, bad.attempt, bad.error_code) == (TaskStatus.FAILED, 3, ErrorCode.STORAGE_ERROR)
    failed = [e for e in status_log.events[never] if e.status is TaskStatus.FAILED]
    assert [(e.envelope.attempt, e.error.retryable) for e in failed] == [(3, False)]  # once, at the end
    waits = [e for e in status_log.events[never] if e.status is TaskStatus.QUEUED and e.error]
    assert [(e.envelope.attempt, e.error.code, e.error.retryable) for e in waits] == [
        (2, ErrorCode.STORAGE_ERROR, True), (3, ErrorCode.STORAGE_ERROR, True)]
    assert sorted(handler.runs) == sorted([(recovers, 1), (recovers, 2), (never, 1), (never, 2), (never, 3)])
    assert committed(kafka) == 2


def test_gpu_out_of_memory_runs_once_more_in_low_memory_mode_then_fails_typed(
    kafka, status_log, results_dir
):
    handler = Scripted()
    worker = make_worker(kafka, handler, FileStore(results_dir), retry_max_attempts=1)
    recovers, never = submit(kafka, "oom:once", "oom:always")

    stats = Running(worker, max_tasks=2).join()

    assert (stats.completed, stats.failed) == (1, 1)
    status_log.wait_terminal(recovers, never)
    assert status_log.state(recovers).status is TaskStatus.COMPLETED
    assert status_log.state(recovers).attempt == 1  # the low-memory rerun is the same attempt
    bad = status_log.state(never)
    assert (bad.status, bad.error_code) == (TaskStatus.FAILED, ErrorCode.PROVIDER_ERROR)
    assert "out of memory" in bad.error_message.lower()
    runs = list(zip(handler.runs, handler.low_memory))
    assert runs.count(((recovers, 1), False)) == 1 and runs.count(((recovers, 1), True)) == 1
    assert runs.count(((never, 1), False)) == 1 and runs.count(((never, 1), True)) == 1


def test_typed_failures_fail_at_once_and_plain_exceptions_become_provider_errors(kafka, status_log, results_dir):
    handler = Scripted()

    def policy(params: Any) -> str | None:
        return "no robots" if "robot" in params.prompt else None

    worker = Worker(kafka, worker_settings(kafka, retry_max_attempts=1), {TYPE: {"test": lambda: handler}},
                    FileStore(results_dir), None, None, content_policy=policy)
    invalid, crash, robot, fine = submit(kafka, "fail:INVALID_INPUT:9", "crash", "ok robot", "ok")
    with TaskProducer(kafka) as producer:  # a provider this worker does not have
        unknown = producer.submit(TYPE, {"base_image_url": "file:///x.png", "prompt": "ok",
                                         "provider_type": "diffusers"})

    stats = Running(worker, max_tasks=5).join()

    assert (stats.failed, stats.completed, stats.retried) == (4, 1, 0)
    status_log.wait_terminal(invalid, crash, robot, fine, unknown)
    codes = {t: (status_log.state(t).status, status_log.state(t).error_code, status_log.state(t).attempt)
             for t in (invalid, crash, robot, unknown)}
    assert codes == {
        invalid: (TaskStatus.FAILED, ErrorCode.INVALID_INPUT, 1),
        crash: (TaskStatus.FAILED, ErrorCode.PROVIDER_ERROR, 1),
        robot: (TaskStatus.FAILED, ErrorCode.CONTENT_POLICY, 1),
        unknown: (TaskStatus.FAILED, ErrorCode.INVALID_INPUT, 1),
    }
    assert "RuntimeError: boom" in status_log.state(crash).error_message
    assert "diffusers" in status_log.state(unknown).error_message
    assert status_log.state(fine).status is TaskStatus.COMPLETED
    assert (robot, 1) not in handler.runs  # refused before the handler ran


def test_a_task_past_its_time_limit_fails_with_provider_timeout(kafka, status_log, results_dir):
    handler = Scripted()
    worker = make_worker(kafka, handler, FileStore(results_dir), task_timeout_s=0.3, retry_max_attempts=1)
    [task_id] = submit(kafka, "steps:1000:0.01")

    stats = Running(worker, max_tasks=1).join()

    assert stats.failed == 1 and worker.healthy
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.PROVIDER_TIMEOUT)
    assert "0.3s time limit" in state.error_message
    assert committed(kafka) == 1


def test_a_handler_that_ignores_the_time_limit_makes_the_worker_exit_and_another_retries(
        kafka, status_log, results_dir):
    stuck = make_worker(kafka, Scripted(), FileStore(results_dir), task_timeout_s=0.2,
                        timeout_grace_s=0.2, retry_max_attempts=2)
    [task_id] = submit(kafka, "hang")

    stats = Running(stuck).join()  # no burst limit: it stops by itself, unhealthy

    assert not stuck.healthy and stats.failed == 1
    status_log.wait(lambda log: any(e.status is TaskStatus.QUEUED and e.error
                                    for e in log.events[task_id]), "the retry's QUEUED")
    [retry] = [e for e in status_log.events[task_id] if e.status is TaskStatus.QUEUED and e.error]
    assert (retry.envelope.attempt, retry.error.code, retry.error.retryable) == (
        2, ErrorCode.PROVIDER_TIMEOUT, True)
    assert not [e for e in status_log.events[task_id] if e.status is TaskStatus.FAILED]
    # The retry (attempt 2) was handed back to the group; a healthy worker finishes it.
    healthy = make_worker(kafka, Scripted(hang_is_ok=True), FileStore(results_dir))
    assert Running(healthy, max_tasks=1).join().completed == 1
    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert (state.status, state.attempt) == (TaskStatus.COMPLETED, 2)
    assert committed(kafka) == 2  # the original record and its hand-back


def test_a_cancel_during_the_retry_wait_ends_it_cancelled_without_running_again(
        kafka, status_log, results_dir):
    """Attempt 1 fails retryably: QUEUED for attempt 2 (no FAILED), and a back-off far longer
    than the test. A cancel then ends the wait at once: CANCELLED for attempt 2, never run."""
    handler = Scripted()
    worker = make_worker(kafka, handler, FileStore(results_dir), retry_max_attempts=3,
                         retry_backoff_base_s=600.0, retry_backoff_max_s=600.0)
    [task_id] = submit(kafka, "fail:PROVIDER_ERROR:1")
    running = Running(worker, max_tasks=1)
    status_log.wait(lambda log: any(e.status is TaskStatus.QUEUED and e.error
                                    for e in log.events[task_id]), "the retry's QUEUED")
    request_cancel(kafka, task_id)
    stats = running.join()

    status_log.wait_terminal(task_id)
    state = status_log.state(task_id)
    assert (state.status, state.attempt) == (TaskStatus.CANCELLED, 2)
    assert (stats.cancelled, stats.completed, stats.retried) == (1, 0, 1)
    assert handler.runs == [(task_id, 1)]  # attempt 2 never ran
    assert not [e for e in status_log.events[task_id] if e.status is TaskStatus.FAILED]
    assert committed(kafka) == 1


def test_a_task_cancelled_while_queued_never_runs(kafka, status_log, results_dir):
    handler = Scripted()
    cancelled, other = submit(kafka, "ok", "ok")
    request_cancel(kafka, cancelled)
    worker = make_worker(kafka, handler, FileStore(results_dir))

    stats = Running(worker, max_tasks=2).join()

    assert (stats.cancelled, stats.completed) == (1, 1)
    status_log.wait_terminal(cancelled, other)
    assert status_log.state(cancelled).status is TaskStatus.CANCELLED
    assert [t for t, _ in handler.runs] == [other]
    assert committed(kafka) == 2


def test_a_running_task_is_cancelled_and_its_output_discarded(kafka, status_log, results_dir):
    handler = Scripted()
    store = GatedStore(results_dir)
    worker = make_worker(kafka, handler, store)
    [stepping] = submit(kafka, "steps:1000:0.01")
    running = Running(worker, max_tasks=2)

    assert handler.started(stepping).wait(DEADLINE_S)
    request_cancel(kafka, stepping)  # stops at its next step
    [storing] = submit(kafka, "ok")  # only now: tasks on two partitions may run in any order
    assert store.stored.wait(DEADLINE_S)
    request_cancel(kafka, storing)  # its output is written: it must be deleted
    wait_for(lambda: worker.cancel_requested(storing), "the worker to see the second cancel")
    store.release.set()
    stats = running.join()

    assert (stats.cancelled, stats.completed, stats.failed) == (2, 0, 0)
    status_log.wait_terminal(stepping, storing)
    for task_id in (stepping, storing):
        assert status_log.state(task_id).status is TaskStatus.CANCELLED
        assert [e.status for e in status_log.terminals(task_id)] == [TaskStatus.CANCELLED]
        assert files_of(results_dir, task_id) == []
    assert len(store.deleted) == 1
    assert committed(kafka) == 2


def test_a_poison_record_is_dead_lettered_and_the_next_task_completes(kafka, status_log, results_dir):
    poison_id = str(uuid.uuid4())
    topic = kafka.topics.task(TYPE)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=poison_id, value=os.urandom(64), headers=[("origin", b"fuzz")])
    producer.produce(topic, key=b"\xff not a task id", value=b"")
    assert producer.flush(10) == 0
    [good] = submit(kafka, "ok")
    worker = make_worker(kafka, Scripted(), FileStore(results_dir))

    stats = Running(worker, max_tasks=3).join()

    assert (stats.dead_lettered, stats.completed) == (2, 1)
    dlq = read_topic(kafka, kafka.topics.dlq(topic), expect=2)
    by_key = {m.key(): m for m in dlq}
    poison = by_key[poison_id.encode()]
    headers = header_dict(poison.headers())
    assert headers["original.topic"] == topic and headers["origin"] == "fuzz"
    assert {"error.class", "error.message", "original.partition", "original.offset"} <= headers.keys()
    assert headers["error.class"].endswith("Error") and headers["error.message"]
    assert int(headers["original.offset"]) >= 0
    status_log.wait_terminal(poison_id, good)
    bad = status_log.state(poison_id)
    assert (bad.status, bad.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT)
    assert status_log.state(good).status is TaskStatus.COMPLETED
    assert committed(kafka) == 3


def test_a_stopped_worker_leaves_its_task_to_the_group(kafka, status_log, results_dir):
    first_handler = Scripted()
    first = make_worker(kafka, first_handler, FileStore(results_dir), shutdown_grace_s=0.0)
    [task_id] = submit(kafka, "steps:100:0.01")
    running = Running(first)
    assert first_handler.started(task_id).wait(DEADLINE_S)

    first.stop()  # what SIGTERM does
    stats = running.join()

    assert (stats.aborted, stats.completed, stats.failed, stats.cancelled) == (1, 0, 0, 0)
    status_log.wait(lambda log: getattr(log.state(task_id), "status", None) is TaskStatus.PROCESSING,
                    "PROCESSING")
    assert status_log.terminals(task_id) == [] and committed(kafka) == 0

    second = make_worker(kafka, Scripted(), FileStore(results_dir))
    assert Running(second, max_tasks=1).join().completed == 1
    status_log.wait_terminal(task_id)
    [terminal] = status_log.terminals(task_id)
    assert terminal.status is TaskStatus.COMPLETED and terminal.worker_id == second.worker_id
    assert committed(kafka) == 1


def test_two_workers_in_one_group_share_the_partitions(kafka_settings, results_dir):
    kafka = kafka_settings.model_copy(update={"partitions": 4})
    ensure_topics(kafka)
    log = StatusLog(kafka)
    workers = [make_worker(kafka, Scripted(), FileStore(results_dir)) for _ in range(2)]
    running = [Running(w) for w in workers]
    try:
        wait_for(lambda: all(w.assignment() for w in workers), "both workers to own partitions")
        assert not set(workers[0].assignment()) & set(workers[1].assignment())
        task_ids = submit(kafka, *["steps:5:0.01"] * 16)
        log.wait_terminal(*task_ids)
    finally:
        for w in workers:
            w.stop()
        stats = [r.join() for r in running]
        log.close()

    assert all(s.completed > 0 for s in stats) and sum(s.completed for s in stats) == 16
    assert all(log.state(t).status is TaskStatus.COMPLETED for t in task_ids)
    assert {log.terminals(t)[0].worker_id for t in task_ids} == {w.worker_id for w in workers}
    assert committed(kafka) == 16


def test_the_worker_command_runs_the_registered_handlers_in_burst_mode(kafka, status_log, tmp_path,
                                                                       results_dir):
    image = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (1, 2, 3)).save(image)
    [task_id] = submit(kafka, "a bit brighter", base_image_url=image.as_uri())
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "WORKER_GROUP_PREFIX": f"{kafka.topic_prefix}-workers", "WORKER_DEVICE": "cpu",
           "RESULTS_URL": results_dir.as_uri(), "INPUT_ALLOWED_FILE_ROOTS": str(tmp_path),
           "COMPUTE_MODEL_CACHE_DIR": str(tmp_path / "models")}

    result = CliRunner().invoke(worker_command, ["--types", "image-adjuster", "--burst",
                                                 "--max-tasks", "1", "--json"], env=env)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["completed"], summary["healthy"]) == (1, True)
    status_log.wait_terminal(task_id)
    assert status_log.state(task_id).status is TaskStatus.COMPLETED
    assert committed(kafka) == 1
