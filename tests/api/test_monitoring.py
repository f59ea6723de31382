"""/monitoring: backlog from the worker group's lag, live workers, statistics."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from confluent_kafka import Consumer

from schemas.enums import ErrorCode, TaskStatus, TaskType
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import submit, wait_status
from tests.kafka_helpers import record_count
from tests.projection.db.helpers import T0, produce, status, submitted, task_row, wait_for

pytestmark = pytest.mark.integration

BG = {"task_type": "BACKGROUND_REMOVE", "image_url": "file:///in/a.png"}


def _queue(client: httpx.Client, operator: Tenant, task_type: str) -> dict:
    resp = client.get("/api/v1/monitoring/queues", headers=operator.headers)
    assert resp.status_code == 200, resp.text
    return next(q for q in resp.json()["queues"] if q["task_type"] == task_type)


def test_queues_and_workers_follow_the_worker_group(api: ApiStack, client: httpx.Client,
                                                    tenant: Tenant, operator: Tenant) -> None:
    ids = [submit(client, tenant, BG).json()["task_id"] for _ in range(3)]
    for tid in ids:
        wait_status(client, tenant, tid, "QUEUED")
    topic = api.kafka.topics.task(TaskType.BACKGROUND_REMOVE)
    queue = _queue(client, operator, "BACKGROUND_REMOVE")
    assert queue["backlog"] == record_count(api.kafka, topic) >= 3
    assert queue["oldest_waiting_s"] is not None and queue["oldest_waiting_s"] >= 0
    assert queue["group_id"] == f"{api.worker_group_prefix}.background_remove"
    assert _queue(client, operator, "REFINE")["backlog"] == 0

    # A worker of that group takes everything and commits: no backlog, one live member.
    worker = Consumer({**api.kafka.client_config(), "group.id": queue["group_id"],
                       "auto.offset.reset": "earliest", "enable.auto.commit": False,
                       "client.id": "test-worker"})
    worker.subscribe([topic])
    try:
        taken = []
        wait_for(lambda: taken.extend(m for m in worker.consume(10, 0.2) if not m.error())
                 or len(taken) >= queue["backlog"], what="the worker to read the backlog")
        worker.commit(asynchronous=False)
        assert _queue(client, operator, "BACKGROUND_REMOVE")["backlog"] == 0
        workers = client.get("/api/v1/monitoring/workers", headers=operator.headers).json()
        group = next(g for g in workers["groups"] if g["group_id"] == queue["group_id"])
        assert [m["client_id"] for m in group["members"]] == ["test-worker"]
        assert workers["total_members"] == 1
    finally:
        worker.close()


def test_stats_of_the_callers_tasks(api: ApiStack, client: httpx.Client, tenant: Tenant) -> None:
    events = []
    ids = []
    for i, (final, seconds) in enumerate([(TaskStatus.COMPLETED, 1), (TaskStatus.COMPLETED, 3),
                                          (TaskStatus.FAILED, 2), (TaskStatus.QUEUED, 0)]):
        tid = str(uuid.uuid4())
        ids.append(tid)
        start = T0 + timedelta(minutes=i)
        kw = {"task_type": TaskType.LLM_INTERACTION, "tenant": tenant.name}
        events.append(submitted(tid, at=start, params={"prompt": "hi"}, **kw))
        events.append(status(tid, TaskStatus.QUEUED, at=start, **kw))
        if final is not TaskStatus.QUEUED:
            events.append(status(tid, TaskStatus.PROCESSING, at=start + timedelta(seconds=1), **kw))
            code = ErrorCode.PROVIDER_ERROR if final is TaskStatus.FAILED else None
            events.append(status(tid, final, at=start + timedelta(seconds=1 + seconds), code=code, **kw))
    produce(api.kafka, events)
    wait_for(lambda: all((task_row(api.db_url, t) or {}).get("params") for t in ids)
             and task_row(api.db_url, ids[2])["status"] == "FAILED", what="the tasks projected")
    wait_for(lambda: task_row(api.db_url, ids[1])["status"] == "COMPLETED", what="COMPLETED")
    body = client.get("/api/v1/monitoring/stats", headers=tenant.headers).json()
    assert body["total"] == 4
    assert body["by_status"] == {"COMPLETED": 2, "FAILED": 1, "QUEUED": 1}
    assert body["failure_rate"] == pytest.approx(1 / 3)
    (llm,) = body["by_type"]
    assert llm["task_type"] == "LLM_INTERACTION" and llm["total"] == 4
    assert llm["p50_ms"] == pytest.approx(2000) and llm["p95_ms"] == pytest.approx(2900)


def test_stats_count_the_results_a_fallback_provider_produced(api: ApiStack, client: httpx.Client,
                                                              tenant: Tenant, operator: Tenant) -> None:
    """The worker stamps ``fallback_reason`` in a result's metadata (gpu_consumers/providers.py);
    the stats count COMPLETED tasks by it, per type and in all."""
    events, ids = [], []
    for i, reason in enumerate(["capability", "PROVIDER_ERROR", "PROVIDER_ERROR", None]):
        tid = str(uuid.uuid4())
        ids.append(tid)
        start = T0 + timedelta(minutes=i)
        kw = {"task_type": TaskType.BACKGROUND_REMOVE, "tenant": tenant.name}
        done = status(tid, TaskStatus.COMPLETED, at=start + timedelta(seconds=2), **kw)
        meta = done.result.metadata.model_copy(update={
            "provider_name": "primary" if reason is None else "fallback", "fallback_reason": reason})
        done = done.model_copy(update={"result": done.result.model_copy(update={"metadata": meta})})
        events += [submitted(tid, at=start, **kw), status(tid, TaskStatus.QUEUED, at=start, **kw),
                   status(tid, TaskStatus.PROCESSING, at=start + timedelta(seconds=1), **kw), done]
    produce(api.kafka, events)
    wait_for(lambda: all((task_row(api.db_url, t) or {}).get("status") == "COMPLETED" for t in ids),
             what="the tasks projected")
    body = client.get("/api/v1/monitoring/stats", headers=tenant.headers).json()
    (bg,) = body["by_type"]
    assert bg["fallbacks"] == {"capability": 1, "PROVIDER_ERROR": 2}
    assert body["fallbacks"] == {"capability": 1, "PROVIDER_ERROR": 2}
    metrics = client.get("/metrics", headers=operator.headers).text
    assert ('compute_task_fallbacks_total{reason="PROVIDER_ERROR",task_type="BACKGROUND_REMOVE"} 2.0'
            in metrics.splitlines())
