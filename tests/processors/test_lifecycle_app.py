"""The Faust app on the real broker, run as ``python -m processors.cli`` in a subprocess.

* It folds the status events of hundreds of tasks (out of order, duplicated) into the state
  topic; SIGKILLed mid-stream and restarted, it recovers its table from the changelog (the state
  topic) and ends with exactly the states, versions included, of ``state.lifecycle.fold_all``
  over the status topic read straight. Records it cannot read go to the DLQ. SIGTERM exits 0.
* A stuck PROCESSING task is resolved by its lease, retried with a new attempt on its task
  topic, and bounded by the poison rule: a lease time-out means its worker is gone, so the
  second one ends the task FAILED/PROVIDER_ERROR ("the task stopped a worker twice") although
  ``max_attempts`` would allow a third; the retried record tells the next worker the count.

Every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from devstack.procs import die_with_parent_fn
from processors.folding import state_to_json
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import ErrorCode, TaskStatus
from schemas.errors import DecodeError
from schemas.events import StatusChanged, TaskSubmitted
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from state.lifecycle import TaskState, fold_all
from state.stops import STOPS_HEADER, lease_event_id
from tests.processors.scripted import T0, lifecycle, shuffled_with_duplicates, status, submitted

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CODEC = EventCodec()
STOP_DEADLINE_S = 150.0
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


class App:
    """``python -m processors.cli`` with the test's topics; its log in ``tmp_path``."""

    def __init__(self, kafka: KafkaSettings, tmp_path: Path, **settings: Any) -> None:
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                    "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
                    "KAFKA_PARTITIONS": str(kafka.partitions),
                    "PROCESSORS_DATADIR": str(tmp_path / "faust"),
                    # A restart takes the partitions back at once (static membership).
                    "PROCESSORS_GROUP_INSTANCE_ID": "test-processor",
                    "PROCESSORS_COMMIT_INTERVAL_S": "0.5",
                    **{f"PROCESSORS_{k.upper()}": str(v) for k, v in settings.items()}}
        self.log = tmp_path / "processors.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processors.cli", "--no-create-topics"], cwd=REPO,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent_fn())

    def check_alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, (
            f"the app exited ({self.proc and self.proc.returncode}):\n{self.tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                # A clean stop flushes the app's producers (each bounded at 10-30 s) and leaves
                # the group: seconds here, but a loaded CI machine once took longer than 60 s.
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


def wait_for(what: str, check: Callable[[], T | None], app: App, timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        app.check_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g}s; app log:\n{app.tail()}")
        time.sleep(0.2)  # polling topics written by another process, bounded by the deadline


def read_all(kafka: KafkaSettings, topic: str) -> list[Any]:
    """Every record ``topic`` holds now, in offset order per partition."""
    consumer = Consumer({**kafka.client_config(), "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        left, records = sum(ends.values()), []
        deadline = time.monotonic() + 30
        while left > 0:
            assert time.monotonic() < deadline, f"{topic}: {len(records)} records read"
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error() and msg.offset() < ends[msg.partition()]:
                records.append(msg)
                left -= 1
        return sorted(records, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def latest_states(kafka: KafkaSettings) -> dict[str, dict]:
    """The state topic as its readers see it: the latest document per task."""
    return {m.key().decode(): json.loads(m.value()) for m in read_all(kafka, kafka.topics.state)}


def same_states(got: dict[str, dict], expected: dict[str, dict]) -> dict[str, dict] | None:
    """``got`` when it equals ``expected``; else None, and what differs goes to the log."""
    if got == expected:
        return got
    wrong = [k for k in expected if got.get(k) != expected[k]]
    print(f"{len(wrong)} states differ; e.g. {wrong[:1] and (expected[wrong[0]], got.get(wrong[0]))}")
    return None


def straight_fold(kafka: KafkaSettings) -> dict[str, TaskState]:
    """``fold_all`` over the status topic read straight (partition order), skipping records
    that cannot be read."""
    events: dict[str, list[StatusChanged]] = defaultdict(list)
    for msg in read_all(kafka, kafka.topics.status):
        try:
            event = CODEC.decode(msg.value(), expect=StatusChanged)
        except DecodeError:
            continue
        events[event.envelope.task_id].append(event)
    return {task_id: fold_all(evs) for task_id, evs in events.items()}


def now() -> datetime:
    return datetime.now(UTC)


def produce(kafka: KafkaSettings, events: list[Any], topic: str | None = None) -> None:
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
    for event in events:
        produce_event(producer, topic or kafka.topics.status, event, codec=CODEC)
    assert producer.flush(30) == 0


# --------------------------------------------------------------------------- the fold


def test_fold_survives_a_kill_and_matches_the_straight_fold(kafka_settings: KafkaSettings,
                                                            tmp_path: Path) -> None:
    kafka = kafka_settings
    ensure_topics(kafka)
    rng = random.Random(20260101)
    first, second, third = [], [], []  # each task's events, cut in three at random places
    for _ in range(300):
        events = shuffled_with_duplicates(lifecycle(str(uuid.uuid4()), T0, rng), rng)
        cut1, cut2 = sorted(rng.randrange(len(events) + 1) for _ in range(2))
        first += events[:cut1]
        second += events[cut1:cut2]
        third += events[cut2:]
    produce(kafka, first)
    garbage, bad_keys = Producer(kafka.producer_config()), {b"not-a-task", str(uuid.uuid4()).encode()}
    for key in bad_keys:
        garbage.produce(kafka.topics.status, key=key, value=b"\x00\x01 not avro" if b"-a-" in key else b"{}")
    assert garbage.flush(30) == 0

    # The scripted events are dated 2026-01-01: no lease may judge them stale here.
    app = App(kafka, tmp_path, lease_s=1e9)
    app.start()
    try:
        expected = {k: state_to_json(v) for k, v in straight_fold(kafka).items()}
        wait_for("folded states of the first half",
                 lambda: latest_states(kafka) == expected, app, timeout_s=90)

        before = len(read_all(kafka, kafka.topics.state))
        produce(kafka, second)
        wait_for("the second half under way", lambda: len(read_all(kafka, kafka.topics.state)) > before, app)
        app.stop(signal.SIGKILL)  # mid-stream: offsets since the last commit are replayed
        produce(kafka, third)  # folded after the restart onto the states recovered

        app.start()
        expected = {k: state_to_json(v) for k, v in straight_fold(kafka).items()}
        assert len(expected) == 300
        got = wait_for("the straight fold's states after the restart",
                       lambda: same_states(latest_states(kafka), expected), app, timeout_s=90)
        assert {d["status"] for d in got.values()} >= {"COMPLETED", "FAILED", "CANCELLED", "PROCESSING"}

        dead = read_all(kafka, kafka.topics.dlq(kafka.topics.status))
        assert {m.key() for m in dead} == bad_keys  # (twice if replayed after the kill)
        headers = header_dict(dead[0].headers())
        assert headers["original.topic"] == kafka.topics.status
        assert {"error.class", "error.message", "original.partition", "original.offset"} <= set(headers)
    finally:
        code = app.stop(signal.SIGTERM)
    assert code == 0, app.tail()
    assert "Traceback" not in app.tail(), app.tail()


# --------------------------------------------------------------------------- leases


def test_a_stuck_task_is_resolved_by_its_lease_and_a_second_worker_stop_ends_it(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    kafka = kafka_settings
    ensure_topics(kafka)
    doomed, recovers, healthy, sentinel, orphan = (str(uuid.uuid4()) for _ in range(5))
    doomed_record = submitted(doomed)
    doomed_record = doomed_record.model_copy(update={"envelope": doomed_record.envelope.model_copy(
        update={"entity_id": "order-doomed", "origin_version": "backend-1"})})
    produce(kafka, [doomed_record, submitted(recovers), submitted(orphan)],
            kafka.topics.task(submitted(doomed).envelope.task_type))
    produce(kafka, [status(t, TaskStatus.PROCESSING, now(), progress=0.1) for t in (doomed, recovers, healthy)]
            + [status(healthy, TaskStatus.COMPLETED, now(), result=True)]
            # orphan's worker wrote its retry (QUEUED for attempt 2) and died in the back-off
            + [status(orphan, TaskStatus.PROCESSING, now()),
               status(orphan, TaskStatus.QUEUED, now(), attempt=2, error=ErrorCode.PROVIDER_ERROR)])

    app = App(kafka, tmp_path, lease_s=2.0, lease_check_interval_s=0.3, retry_max_attempts=3,
              retry_backoff_base_s=0.3, retry_jitter=0.0)
    app.start()
    task_topic = kafka.topics.task(submitted(doomed).envelope.task_type)
    handled: set[tuple[str, int]] = {(doomed, 1), (recovers, 1), (orphan, 1)}

    def dying_workers() -> bool:
        """Play the workers: every new attempt starts and dies, but ``recovers`` completes its
        second one. Done when both tasks are settled."""
        for msg in read_all(kafka, task_topic):
            task = CODEC.decode(msg.value(), expect=None)
            assert isinstance(task, TaskSubmitted)
            key = (task.envelope.task_id, task.envelope.attempt)
            if key in handled:
                continue
            handled.add(key)
            events = [status(key[0], TaskStatus.PROCESSING, now(), attempt=key[1], progress=0.0)]
            if key[0] in (recovers, orphan):
                events.append(status(key[0], TaskStatus.COMPLETED, now(), attempt=key[1], result=True))
            produce(kafka, events)
        states = latest_states(kafka)
        return (states.get(doomed, {}).get("status") == "FAILED" and states[doomed]["attempt"] == 2
                and states.get(recovers, {}).get("status") == "COMPLETED"
                and states.get(orphan, {}).get("status") == "COMPLETED")

    try:
        wait_for("both tasks settled", dying_workers, app, timeout_s=90)
        # One more lease after that: had a third attempt been coming, it would be there now.
        produce(kafka, [status(sentinel, TaskStatus.PROCESSING, now())])
        wait_for("the sentinel's lease", lambda: latest_states(kafka).get(sentinel, {}).get("status") == "FAILED", app)
    finally:
        code = app.stop(signal.SIGTERM)
    assert code == 0, app.tail()

    attempts: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for msg in read_all(kafka, task_topic):
        env = CODEC.decode(msg.value(), expect=None).envelope
        attempts[env.task_id].append((env.attempt, header_dict(msg.headers()).get(STOPS_HEADER)))
    # Two attempts, not max_attempts; the retry tells its worker of the earlier stop.
    assert attempts[doomed] == [(1, None), (2, "1")]
    assert attempts[recovers] == [(1, None), (2, "1")]
    # The dead worker's retry wait, resubmitted by the lease timer a lease after its back-off.
    assert attempts[orphan] == [(1, None), (2, "0")]

    events = [CODEC.decode(m.value(), expect=StatusChanged) for m in read_all(kafka, kafka.topics.status)]
    # FAILED only where a task ended (issue 17): doomed's second stop, and the sentinel, whose
    # retry found no task record to resubmit (it was never submitted).
    failed = {(e.envelope.task_id, e.envelope.attempt): e for e in events if e.status is TaskStatus.FAILED}
    assert set(failed) == {(doomed, 2), (sentinel, 2)}
    assert (failed[doomed, 2].error.code, failed[doomed, 2].error.retryable) == (ErrorCode.PROVIDER_ERROR, False)
    assert failed[doomed, 2].envelope.event_id == lease_event_id(doomed, 2, "timeout")
    assert failed[sentinel, 2].envelope.event_id == lease_event_id(sentinel, 2, "lost")
    # Each first time-out is a retry: QUEUED for attempt 2 with the time-out's error.
    waits = {(e.envelope.task_id, e.envelope.attempt, e.error.code, e.error.retryable) for e in events
             if e.envelope.event_id == lease_event_id(e.envelope.task_id, 1, "timeout")}
    assert waits == {(t, 2, ErrorCode.PROVIDER_TIMEOUT, True) for t in (doomed, recovers, sentinel)}
    assert all(e.status is TaskStatus.QUEUED for e in events
               if e.envelope.event_id == lease_event_id(e.envelope.task_id, 1, "timeout"))
    assert not [e for e in events if e.envelope.task_id == healthy and e.envelope.source == "processors"]
    [resubmitted] = [e for e in events if e.envelope.event_id == lease_event_id(orphan, 2, "queued")]
    assert resubmitted.status is TaskStatus.QUEUED and resubmitted.error.code is ErrorCode.PROVIDER_ERROR
    assert not [e for e in events if e.envelope.task_id == orphan and e.status is TaskStatus.FAILED]
    # The statuses the processors wrote name them (issue 17: PROCESSORS_GROUP_INSTANCE_ID), and
    # carry the task's entity id and origin version from its task record (the sentinel has none).
    written = [e for e in events if e.envelope.source == "processors"]
    assert written and {e.envelope.origin_instance for e in written} == {"test-processor"}
    assert {(e.envelope.entity_id, e.envelope.origin_version) for e in written
            if e.envelope.task_id == doomed} == {("order-doomed", "backend-1")}

    states = latest_states(kafka)
    assert states[doomed]["error_code"] == "PROVIDER_ERROR"
    assert states[doomed]["error_message"].startswith("the task stopped a worker twice: no report")
    assert states[doomed]["stopped_attempts"] == [1, 2]
    assert (states[recovers]["attempt"], states[healthy]["status"]) == (2, "COMPLETED")
    assert states == {k: state_to_json(v) for k, v in straight_fold(kafka).items()}
