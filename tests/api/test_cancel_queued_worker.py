"""A task cancelled through the API while queued ends with ONE CANCELLED on the status topic
(issue 15, item 7): the API writes it, and the real worker that later reaches the task's record
skips it without a status of its own, then runs its next task."""

from __future__ import annotations

import httpx

from gpu_consumers.storage import FileStore
from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.events import StatusChanged
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import submit, wait_status
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.kafka_helpers import read_topic, record_count

TASK = {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///nowhere.png", "prompt": "ok"}


def test_a_queued_task_cancelled_through_the_api_has_one_terminal_status(
        api: ApiStack, client: httpx.Client, tenant: Tenant, results_dir) -> None:
    cancelled = submit(client, tenant, TASK).json()["task_id"]
    wait_status(client, tenant, cancelled, "QUEUED")
    resp = client.post(f"/api/v1/tasks/{cancelled}/cancel", headers=tenant.headers)
    assert resp.status_code == 202 and resp.json()["status"] == "QUEUED"
    wait_status(client, tenant, cancelled, "CANCELLED")  # the API's own CANCELLED
    following = submit(client, tenant, TASK).json()["task_id"]

    handler = Scripted()
    worker = make_worker(api.kafka, handler, FileStore(results_dir))  # the stack's worker group
    stats = Running(worker, max_tasks=2).join(60)  # reaches both records; flushes its statuses

    # Skipped without running either as a cancelled record or, when the record is the first of
    # a partition this worker took over, by the takeover check that finds the task ended.
    assert (stats.cancelled + stats.already_ended, stats.completed) == (1, 1)
    assert [t for t, _ in handler.runs] == [following]  # the cancelled one never ran
    codec = EventCodec()
    topic = api.kafka.topics.status
    events = [codec.decode(m.value(), expect=StatusChanged)
              for m in read_topic(api.kafka, topic, expect=record_count(api.kafka, topic))]
    ends = [(e.status, e.envelope.attempt) for e in events
            if e.envelope.task_id == cancelled and e.status.is_terminal]
    assert len(ends) == 1 and ends[0][0] is TaskStatus.CANCELLED, ends
    assert [e.status for e in events if e.envelope.task_id == following
            and e.status.is_terminal] == [TaskStatus.COMPLETED]
    wait_status(client, tenant, following, "COMPLETED")
