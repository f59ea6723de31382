"""The task API end to end: real uvicorn, projector, Kafka and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import pytest

from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.events import CancelRequested
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import (
    assert_problem,
    get_task,
    run_task,
    sse_frames,
    submit,
    wait_status,
)
from tests.kafka_helpers import read_topic, record_count, wait_for

pytestmark = pytest.mark.integration

BG_REMOVE = {"task_type": "BACKGROUND_REMOVE", "image_url": "file:///in/shirt.png"}


def test_submit_then_completed_with_result(api: ApiStack, client: httpx.Client,
                                           tenant: Tenant) -> None:
    resp = submit(client, tenant, {"task_type": "GENERATION", "prompt": "a red dress",
                                   "width": 512, "height": 768, "seed": 7})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    tid = body["task_id"]
    assert body["status"] == "PENDING" and body["idempotent_replay"] is False
    assert body["links"]["self"] == f"/api/v1/tasks/{tid}" == resp.headers["location"]
    wait_status(client, tenant, tid, "QUEUED")
    # The task record (its params) and its statuses come from two topics: QUEUED can be visible
    # a moment before the params are.
    wait_for(lambda: get_task(client, tenant, tid).json()["params"] is not None, f"{tid}'s params")
    queued = get_task(client, tenant, tid).json()
    assert queued["status"] == "QUEUED"
    assert queued["params"]["prompt"] == "a red dress" and queued["params"]["width"] == 512
    assert queued["origin"]["tenant_id"] == tenant.name and queued["attempt"] == 1
    assert_problem(client.get(f"/api/v1/tasks/{tid}/result", headers=tenant.headers), 409)

    run_task(api, tenant, tid, TaskType.GENERATION, (TaskStatus.PROCESSING, 0.5),
             (TaskStatus.COMPLETED, None))
    done = wait_status(client, tenant, tid, "COMPLETED")
    assert done["progress"] == 1.0 and done["error"] is None
    assert done["result"]["result_image_url"] == f"file:///out/{tid}.png"
    assert done["duration_ms"] is not None and done["completed_at"] >= done["started_at"]
    result = client.get(f"/api/v1/tasks/{tid}/result", headers=tenant.headers)
    assert result.status_code == 200
    assert result.json()["result"] == done["result"]


def test_get_with_wait_answers_when_the_task_ends(api: ApiStack, client: httpx.Client,
                                                  tenant: Tenant) -> None:
    tid = submit(client, tenant, BG_REMOVE).json()["task_id"]
    wait_status(client, tenant, tid, "QUEUED")
    url = f"/api/v1/tasks/{tid}"
    # Not ended: the long poll answers the current state at its deadline.
    early = client.get(url, headers=tenant.headers, params={"wait": 0.3})
    assert early.status_code == 200 and early.json()["status"] == "QUEUED"
    answered: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answered.append(
        client.get(url, headers=tenant.headers, params={"wait": 30}, timeout=60)))
    waiting.start()
    run_task(api, tenant, tid, TaskType.BACKGROUND_REMOVE, (TaskStatus.PROCESSING, 0.5),
             (TaskStatus.COMPLETED, None))
    waiting.join(30)
    assert not waiting.is_alive(), "the long poll did not answer when the task completed"
    done = answered[0].json()
    assert done["status"] == "COMPLETED" and done["result"]["result_image_url"].endswith(f"{tid}.png")
    # Answered from the row the projector's notification carried: the same as a read of it.
    assert done == client.get(url, headers=tenant.headers).json()
    # Ended already: answered at once; bad or too long waits are a 422; unknown tasks a 404.
    assert client.get(url, headers=tenant.headers, params={"wait": 30}).json()["status"] == "COMPLETED"
    assert_problem(client.get(url, headers=tenant.headers, params={"wait": -1}), 422)
    assert_problem(client.get(url, headers=tenant.headers, params={"wait": 3600}), 422)
    assert_problem(client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=tenant.headers,
                              params={"wait": 0.2}), 404)  # unknown at the deadline


def test_get_with_wait_waits_for_a_task_not_yet_readable(api: ApiStack, client: httpx.Client,
                                                         tenant: Tenant) -> None:
    """Read-your-writes: a long poll sent before the projector has the task answers it."""
    tid = str(uuid.uuid4())
    answered: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answered.append(client.get(
        f"/api/v1/tasks/{tid}", headers=tenant.headers, params={"wait": 30}, timeout=60)))
    waiting.start()
    # Waiting (subscribed to the task's notifications) before the task exists anywhere.
    wait_for(lambda: tid in api.app.state.notifier._waiters, "the long poll to wait", timeout_s=10)
    assert not answered
    # The statuses of a task the read model has never seen, up to COMPLETED (the projector
    # makes its row from them, as when they overtake the task record).
    run_task(api, tenant, tid, TaskType.BACKGROUND_REMOVE, (TaskStatus.PROCESSING, 0.5),
             (TaskStatus.COMPLETED, None))
    waiting.join(30)
    assert not waiting.is_alive() and answered[0].status_code == 200, answered
    assert answered[0].json()["status"] == "COMPLETED"


def test_events_stream_follows_and_resumes(api: ApiStack, client: httpx.Client,
                                           tenant: Tenant) -> None:
    tid = submit(client, tenant, BG_REMOVE).json()["task_id"]
    wait_status(client, tenant, tid, "QUEUED")
    frames: list[dict[str, Any]] = []
    opened = threading.Event()

    def follow() -> None:
        with client.stream("GET", f"/api/v1/tasks/{tid}/events", headers=tenant.headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for frame in sse_frames(r.iter_lines()):
                frames.append(frame)
                opened.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert opened.wait(30)
    run_task(api, tenant, tid, TaskType.BACKGROUND_REMOVE, (TaskStatus.PROCESSING, 0.25),
             (TaskStatus.PROCESSING, 0.75), (TaskStatus.COMPLETED, None))
    reader.join(30)
    assert not reader.is_alive(), "the stream did not end after COMPLETED"
    events = [f for f in frames if f.get("event") == "status"]
    assert [int(f["id"]) for f in events] == [1, 2, 3, 4, 5]  # no gaps, no duplicates
    assert [f["data"]["status"] for f in events] == ["PENDING", "QUEUED", "PROCESSING",
                                                      "PROCESSING", "COMPLETED"]
    assert [f["data"]["progress"] for f in events[2:4]] == [0.25, 0.75]
    assert events[-1]["data"]["result"]["result_image_url"].endswith(f"{tid}.png")
    assert frames[-1]["event"] == "end" and frames[-1]["data"]["status"] == "COMPLETED"

    def resumed(**kwargs: Any) -> list[int]:
        with client.stream("GET", f"/api/v1/tasks/{tid}/events", **kwargs) as r:
            return [int(f["id"]) for f in sse_frames(r.iter_lines()) if f.get("event") == "status"]

    assert resumed(headers={**tenant.headers, "Last-Event-ID": "2"}) == [3, 4, 5]
    assert resumed(headers=tenant.headers, params={"after": 4}) == [5]
    assert resumed(headers={**tenant.headers, "Last-Event-ID": "5"}) == []
    bad = client.get(f"/api/v1/tasks/{tid}/events",
                     headers={**tenant.headers, "Last-Event-ID": "abc"})
    assert_problem(bad, 400)


def test_cancel_queued_running_and_terminal(api: ApiStack, client: httpx.Client,
                                            tenant: Tenant) -> None:
    queued = submit(client, tenant, BG_REMOVE).json()["task_id"]
    running = submit(client, tenant, BG_REMOVE).json()["task_id"]
    wait_status(client, tenant, queued, "QUEUED")
    wait_status(client, tenant, running, "QUEUED")
    run_task(api, tenant, running, TaskType.BACKGROUND_REMOVE, (TaskStatus.PROCESSING, 0.1))
    wait_status(client, tenant, running, "PROCESSING")

    resp = client.post(f"/api/v1/tasks/{queued}/cancel", headers=tenant.headers)
    assert resp.status_code == 202 and resp.json() == {
        "task_id": queued, "status": "QUEUED", "cancel_requested": True}
    wait_status(client, tenant, queued, "CANCELLED")  # not started: cancelled at once

    resp = client.post(f"/api/v1/tasks/{running}/cancel", headers=tenant.headers)
    assert resp.status_code == 202 and resp.json()["status"] == "PROCESSING"
    codec = EventCodec()
    control = [codec.decode(m.value()) for m in read_topic(api.kafka, api.kafka.topics.control,
                                                          expect=2)]
    assert {c.envelope.task_id for c in control} >= {queued, running}
    assert all(isinstance(c, CancelRequested) for c in control)
    assert control[0].requested_by == f"api-key:{tenant.key_id}"
    # The running task stops when its worker acts on the cancel: that worker reports CANCELLED.
    run_task(api, tenant, running, TaskType.BACKGROUND_REMOVE, (TaskStatus.CANCELLED, None))
    wait_status(client, tenant, running, "CANCELLED")

    for tid in (queued, running):
        body = assert_problem(client.post(f"/api/v1/tasks/{tid}/cancel", headers=tenant.headers), 409)
        assert "already ended CANCELLED" in body["detail"]
    assert record_count(api.kafka, api.kafka.topics.control) == 2  # a 409 produced nothing


def test_another_tenant_sees_nothing(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                     other_tenant: Tenant) -> None:
    tid = submit(client, tenant, BG_REMOVE).json()["task_id"]
    wait_status(client, tenant, tid, "QUEUED")
    h = other_tenant.headers
    for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/events"), ("POST", "/cancel")):
        assert_problem(client.request(method, f"/api/v1/tasks/{tid}{path}", headers=h), 404)
    listing = client.get("/api/v1/tasks", headers=h).json()
    assert listing["total"] == 0 and listing["items"] == []
    # filtering on the other tenant's id does not widen the scope either
    listing = client.get("/api/v1/tasks", headers=h, params={"origin_tenant_id": tenant.name})
    assert listing.json()["total"] == 0
    assert get_task(client, tenant, tid).json()["status"] == "QUEUED"  # untouched


def test_idempotent_submit(api: ApiStack, client: httpx.Client, tenant: Tenant,
                           other_tenant: Tenant) -> None:
    topic = api.kafka.topics.task(TaskType.BACKGROUND_REMOVE)
    before = record_count(api.kafka, topic)
    key = f"order-{uuid.uuid4()}"
    first = submit(client, tenant, BG_REMOVE, key=key)
    second = submit(client, tenant, BG_REMOVE, key=key)
    assert first.status_code == second.status_code == 202
    tid = first.json()["task_id"]
    assert second.json()["task_id"] == tid and second.json()["idempotent_replay"] is True
    wait_status(client, tenant, tid, "QUEUED")
    third = submit(client, tenant, BG_REMOVE, key=key)  # answered from the read model
    assert third.json()["task_id"] == tid and third.json()["idempotent_replay"] is True
    assert third.json()["status"] == "QUEUED"
    assert record_count(api.kafka, topic) == before + 1  # one task record, not three
    # the same key with other parameters is a conflict, not a silent replay
    body = assert_problem(submit(client, tenant, {**BG_REMOVE, "output_format": "webp"}, key=key), 409)
    assert "Idempotency-Key" in body["detail"]
    # keys are per tenant: another tenant's same key is another task
    other = submit(client, other_tenant, BG_REMOVE, key=key)
    assert other.status_code == 202 and other.json()["task_id"] != tid


@pytest.mark.parametrize("task_type", list(TaskType))
def test_every_task_type_is_accepted(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                     task_type: TaskType) -> None:
    from producers.examples import SEED_EXAMPLES

    body = {"task_type": task_type.value, **SEED_EXAMPLES[task_type]}
    resp = submit(client, tenant, body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["task_type"] == task_type.value
