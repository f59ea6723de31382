"""Shared by the read-model and API tests: fresh databases, scripted events, waiting."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Producer
from psycopg.conninfo import make_conninfo

from projection.db.migrate import migrate
from projection.projector import Projector
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import (
    AvroRecord,
    Envelope,
    ResultMetadata,
    StatusChanged,
    TaskError,
    TaskResult,
    TaskSubmitted,
)
from schemas.kafka_settings import KafkaSettings
from schemas.task_params import PARAMS_MODELS

T = TypeVar("T")
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(condition: Callable[[], T], *, timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


def envelope(task_id: str, *, at: datetime, attempt: int = 1,
             task_type: TaskType = TaskType.BACKGROUND_REMOVE, tenant: str | None = None,
             instance: str | None = None, zone: str | None = None) -> Envelope:
    return Envelope(event_id=str(uuid.uuid4()), task_id=task_id, task_type=task_type,
                    attempt=attempt, occurred_at=at, source="test", origin_instance=instance,
                    origin_zone=zone, origin_tenant_id=tenant)


def status(task_id: str, st: TaskStatus, *, at: datetime, attempt: int = 1,
           progress: float | None = None, code: ErrorCode | None = None,
           result_url: str | None = None, **origin: Any) -> StatusChanged:
    result = None
    if st is TaskStatus.COMPLETED:
        result = TaskResult(result_image_url=result_url or f"file:///out/{task_id}.png",
                            metadata=ResultMetadata(model="classical", provider="classical",
                                                    timing_ms=12, width=64, height=64))
    error = TaskError.of(code, f"{code.value} in a test") if code is not None else None
    return StatusChanged(envelope=envelope(task_id, at=at, attempt=attempt, **origin), status=st,
                         progress=progress, result=result, error=error)


def submitted(task_id: str, *, at: datetime, task_type: TaskType = TaskType.BACKGROUND_REMOVE,
              params: dict[str, Any] | None = None, attempt: int = 1,
              webhook_url: str | None = None, **origin: Any) -> TaskSubmitted:
    params = params if params is not None else {"image_url": "file:///in/a.png"}
    return TaskSubmitted.new(PARAMS_MODELS[task_type].model_validate(params), source="test",
                             task_id=task_id, attempt=attempt, webhook_url=webhook_url).model_copy(
        update={"envelope": envelope(task_id, at=at, attempt=attempt, task_type=task_type,
                                     **origin)})


def lifecycle(task_id: str, *, start: datetime = T0, final: TaskStatus = TaskStatus.COMPLETED,
              **origin: Any) -> list[StatusChanged]:
    """PENDING, QUEUED, PROCESSING 0.3, 0.6, then ``final`` (one second apart)."""
    seconds = iter(range(100))

    def at() -> datetime:
        return start + timedelta(seconds=next(seconds))

    events = [status(task_id, TaskStatus.PENDING, at=at(), **origin),
              status(task_id, TaskStatus.QUEUED, at=at(), **origin)]
    if final in (TaskStatus.PENDING, TaskStatus.QUEUED):
        return events[: 1 if final is TaskStatus.PENDING else 2]
    events += [status(task_id, TaskStatus.PROCESSING, at=at(), progress=0.3, **origin),
               status(task_id, TaskStatus.PROCESSING, at=at(), progress=0.6, **origin)]
    if final is not TaskStatus.PROCESSING:
        code = ErrorCode.CONTENT_POLICY if final is TaskStatus.FAILED else None
        events.append(status(task_id, final, at=at(), code=code, **origin))
    return events


def produce(kafka: KafkaSettings, events: Iterable[AvroRecord], codec: EventCodec | None = None) -> int:
    """Produce each event to its topic (status or task topic), keyed by task id; wait for acks."""
    codec = codec or EventCodec()
    producer = Producer({**kafka.producer_config(), "linger.ms": 0})
    count = 0
    for event in events:
        topic = (kafka.topics.status if isinstance(event, StatusChanged)
                 else kafka.topics.task(event.envelope.task_type))
        produce_event(producer, topic, event, codec=codec)
        count += 1
    assert producer.flush(30) == 0, "records still undelivered after 30s"
    return count


def table(url: str, name: str, order_by: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {name} ORDER BY {order_by}").fetchall()


def task_row(url: str, task_id: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM tasks WHERE task_id = %s", (task_id,)).fetchone()


@contextmanager
def running_projector(db_url: str, kafka: KafkaSettings, **kwargs) -> Iterator[Projector]:
    migrate(db_url)
    projector = Projector(db_url, kafka, **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=projector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield projector
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
