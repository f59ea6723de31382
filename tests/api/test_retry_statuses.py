"""Issue 17's done-when line on the real stack: a retried task shows FAILED exactly once, at its
end, on the wire, in the API and in webhooks; a cancel during a retry wait ends it CANCELLED.

Real Kafka, PostgreSQL, a real worker (the scripted handler, inline), the API under uvicorn and
a projector that delivers webhooks to a local receiver. Three tasks:

* ``recovers`` fails with PROVIDER_ERROR on attempts 1 and 2, then completes: no FAILED anywhere;
* ``never`` fails three times (max_attempts 3): one FAILED, attempt 3, the last status;
* ``cancelled`` fails once, then waits for a back-off far longer than the test: the API shows it
  QUEUED for attempt 2 with the error (``retryable``), a long poll does not end on it, and the
  API's cancel (202, not 409) ends it CANCELLED; attempt 2 never runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api import create_app, load_settings
from gpu_consumers.storage import FileStore
from projection.db.migrate import migrate
from projection.webhooks import WebhookSettings
from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings
from tests.api.conftest import ApiStack, new_tenant, serving
from tests.api.helpers import sse_frames, submit
from tests.api.test_webhooks import Receiver
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.kafka_helpers import read_topic, record_count
from tests.projection.db.helpers import fresh_database, wait_for

pytestmark = pytest.mark.integration

F, Q = TaskStatus.FAILED, TaskStatus.QUEUED


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    return Receiver([])


@pytest.fixture(scope="module")
def retry_stack(database_url: str, kafka_bootstrap: str, receiver: Receiver) -> Iterator[ApiStack]:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap,
                          topic_prefix=f"retry{uuid.uuid4().hex[:10]}", partitions=2)
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        settings = load_settings(database_url=db_url, kafka=kafka, sse_poll_s=0.2,
                                 worker_group_prefix=f"{kafka.topic_prefix}-workers")
        webhooks = WebhookSettings(secret="s3cr3t", allow_private_networks=True,
                                   backoff_base_s=0.05)
        with serving(create_app(settings), db_url, kafka, webhooks) as (base_url, projector):
            yield ApiStack(base_url, db_url, kafka, None, projector,
                           settings.worker_group_prefix)


def _task(prompt: str, receiver: Receiver) -> dict:
    return {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///nowhere.png",
            "prompt": prompt, "webhook_url": receiver.url}


def _wire(kafka: KafkaSettings, task_id: str) -> list[StatusChanged]:
    topic, codec = kafka.topics.status, EventCodec()
    events = [codec.decode(m.value(), expect=StatusChanged)
              for m in read_topic(kafka, topic, expect=record_count(kafka, topic))]
    return [e for e in events if e.envelope.task_id == task_id]


def _hooks(receiver: Receiver, task_id: str) -> list[dict]:
    return [d for d in receiver.delivered() if d["task_id"] == task_id]


def test_a_retried_task_shows_failed_once_at_its_end_on_the_wire_in_the_api_and_in_webhooks(
        retry_stack: ApiStack, receiver: Receiver, results_dir: Path) -> None:
    tenant = new_tenant(retry_stack)
    with httpx.Client(base_url=retry_stack.base_url, timeout=30) as client:
        recovers = submit(client, tenant, _task("fail:PROVIDER_ERROR:2", receiver)).json()["task_id"]
        never = submit(client, tenant, _task("fail:PROVIDER_ERROR:99", receiver)).json()["task_id"]
        handler = Scripted()
        worker = make_worker(retry_stack.kafka, handler, FileStore(results_dir), retry_max_attempts=3)
        stats = Running(worker, max_tasks=2).join(60)
        assert (stats.completed, stats.failed, stats.retried) == (1, 1, 4)

        # In the API: the end, with no retry to come; a long poll answers at once.
        done = client.get(f"/api/v1/tasks/{recovers}", headers=tenant.headers,
                          params={"wait": 30}).json()
        assert (done["status"], done["attempt"], done["error"]) == ("COMPLETED", 3, None)
        ended = client.get(f"/api/v1/tasks/{never}", headers=tenant.headers,
                           params={"wait": 30}).json()
        assert (ended["status"], ended["attempt"]) == ("FAILED", 3)
        assert ended["error"]["code"] == "PROVIDER_ERROR" and ended["error"]["retryable"] is False
        # The API's event stream: FAILED once, the last status, then the stream ends.
        with client.stream("GET", f"/api/v1/tasks/{never}/events", headers=tenant.headers) as r:
            frames = list(sse_frames(r.iter_lines()))
        statuses = [f["data"]["status"] for f in frames if f.get("event") == "status"]
        assert statuses.count("FAILED") == 1 and statuses[-1] == "FAILED", statuses
        assert frames[-1].get("event") == "end"

    # On the wire: the retries are QUEUED for the next attempt with the error, never FAILED.
    wire = _wire(retry_stack.kafka, recovers)
    assert not [e for e in wire if e.status is F]
    assert [(e.envelope.attempt, e.error.code.value, e.error.retryable)
            for e in wire if e.status is Q and e.error] == [
        (2, "PROVIDER_ERROR", True), (3, "PROVIDER_ERROR", True)]
    wire = _wire(retry_stack.kafka, never)
    assert [(e.envelope.attempt, e.error.retryable) for e in wire if e.status is F] == [(3, False)]
    assert wire[-1].status is F  # the worker's last word
    assert [e.envelope.attempt for e in wire if e.status is Q and e.error] == [2, 3]

    # In webhooks: every status change, in order; FAILED once, last.
    wait_for(lambda: _hooks(receiver, recovers) and _hooks(receiver, recovers)[-1]["status"]
             == "COMPLETED", what="recovers' COMPLETED webhook")
    wait_for(lambda: _hooks(receiver, never) and _hooks(receiver, never)[-1]["status"] == "FAILED",
             what="never's FAILED webhook")
    assert "FAILED" not in [d["status"] for d in _hooks(receiver, recovers)]
    hooks = _hooks(receiver, never)
    assert [d["status"] for d in hooks].count("FAILED") == 1
    assert [(d["status"], d["attempt"]) for d in hooks if d["status"] in ("QUEUED", "FAILED")][-3:] \
        == [("QUEUED", 2), ("QUEUED", 3), ("FAILED", 3)]


def test_a_cancel_during_the_retry_wait_ends_it_cancelled_and_it_never_runs_again(
        retry_stack: ApiStack, receiver: Receiver, results_dir: Path) -> None:
    tenant = new_tenant(retry_stack)
    handler = Scripted()
    # A back-off far longer than the test: only the cancel can end the wait.
    worker = make_worker(retry_stack.kafka, handler, FileStore(results_dir), retry_max_attempts=3,
                         retry_backoff_base_s=600.0, retry_backoff_max_s=600.0)
    with httpx.Client(base_url=retry_stack.base_url, timeout=30) as client:
        task_id = submit(client, tenant, _task("fail:PROVIDER_ERROR:1", receiver)).json()["task_id"]
        running = Running(worker, max_tasks=1)

        def retry_wait() -> dict | None:
            resp = client.get(f"/api/v1/tasks/{task_id}", headers=tenant.headers)
            if resp.status_code == 404:  # not in the read model yet (docs/API.md: eventual)
                return None
            task = resp.json()
            return task if task["attempt"] == 2 else None

        waiting = wait_for(retry_wait, what="the retry wait in the API")
        assert waiting["status"] == "QUEUED"
        assert waiting["error"]["code"] == "PROVIDER_ERROR" and waiting["error"]["retryable"]
        assert "runs at" in waiting["message"]
        # Not ended: a long poll waits its time out and answers with the same wait.
        polled = client.get(f"/api/v1/tasks/{task_id}", headers=tenant.headers,
                            params={"wait": 0.5}).json()
        assert (polled["status"], polled["attempt"]) == ("QUEUED", 2)

        resp = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=tenant.headers)
        assert resp.status_code == 202, resp.text
        stats = running.join(60)
        ended = client.get(f"/api/v1/tasks/{task_id}", headers=tenant.headers,
                           params={"wait": 30}).json()
    assert (ended["status"], ended["attempt"]) == ("CANCELLED", 2)
    assert handler.runs == [(task_id, 1)]  # attempt 2 never ran
    assert (stats.cancelled, stats.completed) == (1, 0)
    wire = _wire(retry_stack.kafka, task_id)
    assert not [e for e in wire if e.status is F]
    assert {e.envelope.attempt for e in wire if e.status is TaskStatus.CANCELLED} == {2}
    assert not [e for e in wire if e.envelope.attempt == 2 and e.status is TaskStatus.PROCESSING]
    wait_for(lambda: _hooks(receiver, task_id) and _hooks(receiver, task_id)[-1]["status"]
             == "CANCELLED", what="the CANCELLED webhook")
    assert "FAILED" not in [d["status"] for d in _hooks(receiver, task_id)]
