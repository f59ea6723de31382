"""Small helpers of the API tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg.rows import dict_row

from schemas.enums import TaskStatus, TaskType
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import watermarks
from tests.api.conftest import ApiStack, Tenant
from tests.projection.db.helpers import produce, status, wait_for

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


def assert_problem(resp: httpx.Response, code: int) -> dict[str, Any]:
    assert resp.status_code == code, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == code and body["type"].startswith("urn:compute-server:problem:")
    assert "Traceback" not in resp.text
    return body


def submit(client: httpx.Client, tenant: Tenant, body: dict[str, Any], *,
           key: str | None = None) -> httpx.Response:
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/api/v1/tasks", json=body, headers=headers)


def get_task(client: httpx.Client, tenant: Tenant, task_id: str) -> httpx.Response:
    return client.get(f"/api/v1/tasks/{task_id}", headers=tenant.headers)


def wait_status(client: httpx.Client, tenant: Tenant, task_id: str, *statuses: str,
                timeout_s: float = 30.0) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        resp = get_task(client, tenant, task_id)
        if resp.status_code == 200 and resp.json()["status"] in statuses:
            return resp.json()
        return None

    return wait_for(seen, timeout_s=timeout_s, what=f"task {task_id} to be {statuses}")


def now(offset_s: float = 0.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset_s)


def run_task(api: ApiStack, tenant: Tenant, task_id: str, task_type: TaskType,
             *steps: tuple[TaskStatus, float | None]) -> None:
    """Produce the status events a worker would, one millisecond apart."""
    events = [status(task_id, st, at=now(i / 1000), progress=p, task_type=task_type,
                     tenant=tenant.name) for i, (st, p) in enumerate(steps, start=1)]
    produce(api.kafka, events)


def projector_caught_up(kafka: KafkaSettings, group: str, topics: list[str]) -> bool:
    """Whether ``group`` has committed every record the topics hold (it commits only after the
    database transaction, so every row those records make is written)."""
    consumer = Consumer({**kafka.client_config(), "group.id": group})
    try:
        meta = consumer.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in topics for p in meta[t].partitions]
        committed = consumer.committed(parts, timeout=10)
        return all(watermarks(consumer, tp)[1] <= max(done.offset, 0)
                   for tp, done in zip(parts, committed, strict=True))
    finally:
        consumer.close()


def record_counts(kafka: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """Records each topic holds now (sum of its partitions' high watermarks), one consumer;
    a just-created partition's moment without a leader is retried (schemas.topic_admin)."""
    consumer = Consumer({**kafka.client_config(), "group.id": f"count-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(timeout=10).topics
        return {t: sum(watermarks(consumer, TopicPartition(t, p), 30.0)[1] for p in meta[t].partitions)
                for t in topics}
    finally:
        consumer.close()


def sse_frames(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream into frames: {"id", "event", "data"} (comments dropped)."""
    frame: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if frame:
                if "data" in frame:
                    frame["data"] = json.loads(frame["data"])
                yield frame
            frame = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        frame[field] = value[1:] if value.startswith(" ") else value


def webhook_outbox(db_url: str, kind: str, subject_id: str) -> list[dict[str, Any]]:
    """The outbox rows of one task or generation, oldest first."""
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT state, attempts, event_id::text, url, body FROM webhook_outbox"
            " WHERE subject_kind = %s AND subject_id = %s ORDER BY outbox_id", (kind, subject_id)).fetchall()


def webhook_deliveries(db_url: str, kind: str, subject_id: str) -> list[tuple]:
    """Every delivery attempt of one task or generation: (attempt, status code, error, event id, url)."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT attempt, status_code, error, event_id::text, url FROM webhook_deliveries"
            " WHERE subject_kind = %s AND subject_id = %s ORDER BY delivery_id", (kind, subject_id)).fetchall()


def crash_before_commit(db_url: str, kafka: KafkaSettings, settings: Any, what: str) -> None:
    """A projector whose first batch that queues webhook deliveries dies right after queueing
    them, before its transaction commits (a batch that queues nothing commits)."""
    from projection.projector import Projector
    from projection.webhooks import enqueue

    def crash_after_enqueue(conn: psycopg.Connection, result: Any) -> None:
        if enqueue(conn, result, settings):
            raise RuntimeError("the process dies before the batch commits")

    crashing = Projector(db_url, kafka, in_transaction=crash_after_enqueue, create_topics=False)
    try:
        with pytest.raises(RuntimeError, match="dies"):
            wait_for(lambda: crashing.poll_once() and False, what=what)
    finally:
        crashing.close()


def project_until(db_url: str, kafka: KafkaSettings, settings: Any, done: Any, what: str) -> None:
    """A projector queueing webhook deliveries in its batches, polled until ``done()``."""
    from projection.projector import Projector
    from projection.webhooks import enqueue

    projector = Projector(db_url, kafka, create_topics=False,
                          in_transaction=lambda conn, result: enqueue(conn, result, settings))
    try:
        wait_for(lambda: projector.poll_once() is not None and done(), what=what)
    finally:
        projector.close()
