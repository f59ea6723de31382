"""The backend-compatible webhook payload (issue 17), end to end on the real stack: tasks
submitted through the API (whose origin the deployment maps to ``compat``) and straight to Kafka
by another origin (``native``), run by a real worker, projected by the API's embedded projector
with webhooks configured from the environment, delivered signed to a real HTTP receiver; plus
origin_version and entity_id in the API and on the status topic."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import uvicorn

from api import create_app, load_settings
from gpu_consumers.storage import FileStore
from producers.submit import Origin, TaskProducer
from projection.db.apikeys import create_key
from projection.db.migrate import migrate
from projection.webhook_formats import (
    COMPAT,
    NATIVE,
    PayloadFormats,
    compat_progress,
    payload_formats_from_env,
)
from projection.webhooks import SIGNATURE_HEADER, verify, webhook_settings_from_env
from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.api.conftest import _Server
from tests.api.test_webhooks import Receiver
from tests.gpu_consumers.runtime_helpers import TYPE, Running, Scripted, make_worker
from tests.kafka_helpers import read_topic, record_count
from tests.projection.db.helpers import fresh_database, wait_for

SECRET = "compat-secret"
COMPAT_FIELDS = ["event_type", "task_id", "task_type", "status", "progress", "error_message",
                 "error_category", "entity_id", "origin_instance", "origin_zone", "origin_version",
                 "timestamp", "started_at", "completed_at", "metadata"]
NATIVE_FIELDS = ["type", "event_id", "task_id", "task_type", "status", "attempt", "progress",
                 "result", "message", "error", "occurred_at"]


# --------------------------------------------------------------------------- settings, no I/O


def test_formats_by_deployment_and_origin_and_their_errors():
    formats = payload_formats_from_env({"COMPUTE_WEBHOOK_PAYLOAD_FORMAT": "Compat",
                                        "COMPUTE_WEBHOOK_ORIGIN_FORMATS": '{"legacy-7": "native"}'})
    assert (formats.for_origin("legacy-7"), formats.for_origin("other"), formats.for_origin(None)) == (
        NATIVE, COMPAT, COMPAT)
    assert payload_formats_from_env({}) == PayloadFormats()
    assert PayloadFormats().for_origin("anything") == NATIVE
    for bad in ({"COMPUTE_WEBHOOK_PAYLOAD_FORMAT": "xml"}, {"COMPUTE_WEBHOOK_ORIGIN_FORMATS": "[1]"},
                {"COMPUTE_WEBHOOK_ORIGIN_FORMATS": '{"a": "v2"}'}, {"COMPUTE_WEBHOOK_ORIGIN_FORMATS": "{"},
                {"COMPUTE_WEBHOOK_ORIGIN_FORMATS": '{"": "compat"}'}):
        with pytest.raises(ValueError):
            payload_formats_from_env(bad)
    settings = webhook_settings_from_env({"COMPUTE_WEBHOOK_SECRET": "s",
                                          "COMPUTE_WEBHOOK_ORIGIN_FORMATS": '{"b": "compat"}'})
    assert settings is not None and settings.formats.for_origin("b") == COMPAT


def test_compat_progress_is_a_whole_percentage_and_100_only_when_completed():
    assert [compat_progress(TaskStatus.PROCESSING, p) for p in (0.0, 0.29, 0.5, 0.996, 1.0)] == [0, 29, 50, 99, 99]
    assert compat_progress(TaskStatus.COMPLETED, 1.0) == 100 and compat_progress(TaskStatus.QUEUED, 0.0) == 0


# --------------------------------------------------------------------------- the real stack


@contextlib.contextmanager
def _serving(app: object) -> Iterator[str]:
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
    assert server.started, "the API server did not start"
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def _iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@pytest.mark.integration
def test_compat_webhooks_field_by_field_native_for_another_origin(
        database_url: str, kafka_bootstrap: str, results_dir, monkeypatch) -> None:
    receiver = Receiver([])
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"wc{uuid.uuid4().hex[:10]}",
                          partitions=2)
    ensure_topics(kafka)
    for name, value in {"COMPUTE_WEBHOOK_SECRET": SECRET, "COMPUTE_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
                        "COMPUTE_WEBHOOK_PAYLOAD_FORMAT": "native",
                        "COMPUTE_WEBHOOK_ORIGIN_FORMATS": json.dumps({"backend-7": "compat"}),
                        "COMPUTE_WEBHOOK_ORIGIN_URLS": json.dumps({"backend-7": receiver.url})}.items():
        monkeypatch.setenv(name, value)
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        tenant = "acme-" + uuid.uuid4().hex[:6]
        key, _ = create_key(db_url, tenant)
        headers = {"Authorization": f"Bearer {key}"}
        app = create_app(load_settings(database_url=db_url, kafka=kafka, embedded_projector=True,
                                       origin_instance="backend-7", origin_zone="eu-1",
                                       worker_group_prefix=f"{kafka.topic_prefix}-workers"))
        with _serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
            common = {"task_type": TYPE.value, "base_image_url": "file:///in/a.png",
                      "origin_version": "backend-4.2.1"}
            # No webhook_url: the deployment's URL for origin backend-7 (COMPUTE_WEBHOOK_ORIGIN_URLS).
            done_resp = client.post("/api/v1/tasks", headers=headers,
                                    json={**common, "prompt": "steps:2:0.01", "entity_id": "order-42"})
            failed_resp = client.post("/api/v1/tasks", headers=headers,
                                      json={**common, "prompt": "fail:INVALID_INPUT:9"})
            assert done_resp.status_code == failed_resp.status_code == 202, done_resp.text
            done_id, failed_id = done_resp.json()["task_id"], failed_resp.json()["task_id"]
            bad = client.post("/api/v1/tasks", headers=headers, json={**common, "prompt": "ok", "entity_id": "a\nb"})
            assert bad.status_code == 422 and "entity_id" in bad.text
            with TaskProducer(kafka, origin=Origin(instance="other-system", version="9")) as producer:
                native_id = producer.submit(TYPE, {"base_image_url": "file:///in/a.png", "prompt": "ok"},
                                            webhook_url=receiver.url, entity_id="n-1")

            # A type no worker here serves, cancelled while QUEUED: the API writes its CANCELLED.
            cancel_id = client.post("/api/v1/tasks", headers=headers, json={
                "task_type": "BACKGROUND_REMOVE", "image_url": "file:///in/a.png", "entity_id": "order-77",
                "origin_version": "backend-4.2.1"}).json()["task_id"]
            wait_for(lambda: client.get(f"/api/v1/tasks/{cancel_id}", headers=headers).json().get("status")
                     == "QUEUED", what="the task to cancel queued")
            assert client.post(f"/api/v1/tasks/{cancel_id}/cancel", headers=headers).status_code == 202

            worker = make_worker(kafka, Scripted(), FileStore(results_dir), origin_zone="gpu-b")
            assert Running(worker, max_tasks=3).join().handled == 3

            def by_task(task_id: str, last: str) -> list[dict] | None:
                got = [d for d in receiver.delivered() if d["task_id"] == task_id]
                return got if got and got[-1]["status"] in (last, last.lower()) else None

            done = wait_for(lambda: by_task(done_id, "COMPLETED"), what="the COMPLETED webhook")
            failed = wait_for(lambda: by_task(failed_id, "FAILED"), what="the FAILED webhook")
            native = wait_for(lambda: by_task(native_id, "COMPLETED"), what="the native webhook")
            cancelled = wait_for(lambda: by_task(cancel_id, "CANCELLED"), what="the CANCELLED webhook")

            # The API shows what was submitted; the origin is the task's (the API deployment's
            # instance and zone, the caller's version), never the worker's.
            task = client.get(f"/api/v1/tasks/{done_id}", headers=headers).json()
            assert task["entity_id"] == "order-42"
            assert task["origin"] == {"instance": "backend-7", "zone": "eu-1", "tenant_id": tenant,
                                      "version": "backend-4.2.1"}
            assert client.get(f"/api/v1/tasks/{failed_id}", headers=headers).json()["entity_id"] is None
            listed = client.get("/api/v1/tasks", headers=headers, params={"entity_id": "order-42"}).json()
            assert [t["task_id"] for t in listed["items"]] == [done_id]

    # Signed as always.
    for request_headers, body, _ in receiver.requests:
        assert verify(SECRET, request_headers[SIGNATURE_HEADER], body)

    # compat, field by field: exactly the backend's fields, in its order.
    assert [d["event_type"] for d in done] == ["task.pending", "task.queued", "task.processing", "task.completed"]
    for d in [*done, *failed]:
        assert list(d) == COMPAT_FIELDS
        assert (d["task_type"], d["origin_instance"], d["origin_zone"], d["origin_version"]) == (
            "IMAGE_ADJUSTER", "backend-7", "eu-1", "backend-4.2.1")
        assert d["status"] == d["event_type"].removeprefix("task.")
        assert isinstance(d["progress"], int) and 0 <= d["progress"] <= 100
        assert _iso(d["timestamp"]).tzinfo is not None
        assert d["metadata"]["attempt"] == 1 and uuid.UUID(d["metadata"]["event_id"])
    assert {d["entity_id"] for d in done} == {"order-42"} and {d["entity_id"] for d in failed} == {None}
    assert {d["task_id"] for d in done} == {done_id}
    pending, queued, processing, completed = done
    assert [d["progress"] for d in done] == [0, 0, 0, 100]
    assert all(d["error_message"] is None and d["error_category"] is None for d in done)
    assert pending["started_at"] is None and processing["started_at"] is not None
    assert processing["completed_at"] is None
    assert _iso(completed["completed_at"]) >= _iso(completed["started_at"]) == _iso(processing["started_at"])
    assert completed["timestamp"] == completed["completed_at"]
    meta = completed["metadata"]
    assert (meta["model"], meta["provider"], meta["seed"], meta["width"], meta["height"]) == ("scripted", "test", 7, 1, 1)
    assert meta["result_image_url"].endswith(".png") and meta["timing_ms"] >= 0
    assert [d["event_type"] for d in cancelled] == ["task.pending", "task.queued", "task.cancelled"]
    assert cancelled[-1]["completed_at"] is not None and cancelled[-1]["started_at"] is None
    assert (cancelled[-1]["entity_id"], cancelled[-1]["error_category"]) == ("order-77", None)
    last = failed[-1]
    assert (last["event_type"], last["status"], last["error_category"]) == ("task.failed", "failed", "validation")
    assert "scripted INVALID_INPUT" in last["error_message"] and last["metadata"]["error_code"] == "INVALID_INPUT"
    assert last["completed_at"] is not None and last["progress"] < 100

    # native for the other origin, as before: its own field list, progress 0..1.
    assert [d["status"] for d in native] == ["PENDING", "QUEUED", "PROCESSING", "COMPLETED"]
    assert all(list(d) == NATIVE_FIELDS and d["type"] == "task.status_changed" for d in native)
    assert native[-1]["progress"] == 1.0 and native[-1]["result"]["result_image_url"].endswith(".png")

    # On the status topic: every status of the API task carries the caller's version and entity;
    # the worker's name the worker (its id, its zone), the submitter's name the API deployment.
    codec = EventCodec()
    statuses = [e for e in (codec.decode(m.value(), expect=StatusChanged)
                            for m in read_topic(kafka, kafka.topics.status,
                                                expect=record_count(kafka, kafka.topics.status)))
                if e.envelope.task_id == done_id]
    assert len(statuses) >= 4
    for e in statuses:
        env = e.envelope
        assert (env.origin_version, env.entity_id, env.origin_tenant_id) == ("backend-4.2.1", "order-42", tenant)
        expected = (worker.worker_id, "gpu-b") if e.worker_id else ("backend-7", "eu-1")
        assert (env.origin_instance, env.origin_zone) == expected
    assert {e.worker_id for e in statuses} == {None, worker.worker_id}
    # The CANCELLED the API wrote carries the task's version and entity too.
    [by_api] = [e for m in read_topic(kafka, kafka.topics.status, expect=record_count(kafka, kafka.topics.status))
                if (e := codec.decode(m.value(), expect=StatusChanged)).envelope.task_id == cancel_id
                and e.status is TaskStatus.CANCELLED]
    assert (by_api.envelope.entity_id, by_api.envelope.origin_version) == ("order-77", "backend-4.2.1")
    assert (by_api.envelope.origin_instance, by_api.envelope.source) == ("backend-7", "api")
