"""GET /monitoring/overview, GET /tasks/{id}/webhook-deliveries and the operator's fleet view
(GET /tasks across tenants with ``tenant``, any tenant's task, result and events), on the real
API, projector, Kafka and PostgreSQL. Tenant keys keep seeing their own tenant's tasks only."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import psycopg
import pytest

from schemas.enums import ErrorCode, TaskStatus, TaskType
from tests.api.conftest import ApiStack, Tenant, new_tenant
from tests.api.helpers import assert_problem, now, sse_frames
from tests.projection.db.helpers import produce, status, submitted, task_row, wait_for

pytestmark = pytest.mark.integration

LLM = TaskType.LLM_INTERACTION


def _tasks(api: ApiStack, tenant: Tenant, *plan: tuple[TaskStatus, float]) -> list[str]:
    """One LLM_INTERACTION task of ``tenant`` per (final status, seconds of processing), ended
    a minute ago; a PROCESSING one is run by the worker ``w-<tenant>``."""
    events, ids = [], []
    start = now(-60)
    for final, seconds in plan:
        tid = str(uuid.uuid4())
        ids.append(tid)
        kw = {"task_type": LLM, "tenant": tenant.name}
        events += [submitted(tid, at=start, params={"prompt": "hi"}, **kw),
                   status(tid, TaskStatus.QUEUED, at=start, **kw)]
        if final is TaskStatus.QUEUED:
            continue
        events.append(status(tid, TaskStatus.PROCESSING, at=start + timedelta(seconds=1), **kw)
                      .model_copy(update={"worker_id": f"w-{tenant.name}"}))
        if final is not TaskStatus.PROCESSING:
            code = ErrorCode.INVALID_INPUT if final is TaskStatus.FAILED else None
            events.append(status(tid, final, at=start + timedelta(seconds=1 + seconds), code=code, **kw))
    produce(api.kafka, events)
    wait_for(lambda: all((row := task_row(api.db_url, t)) and row["params"]
                         and row["status"] == s.value for t, (s, _) in zip(ids, plan, strict=True)),
             what="the tasks projected")
    return ids


@pytest.fixture(scope="module")
def fleet(api: ApiStack) -> dict[str, object]:
    """Two tenants' tasks and an operator (its own tenant has none)."""
    a, b = new_tenant(api), new_tenant(api)
    return {"a": a, "b": b, "operator": new_tenant(api, operator=True),
            "a_ids": _tasks(api, a, (TaskStatus.COMPLETED, 1), (TaskStatus.COMPLETED, 3),
                            (TaskStatus.PROCESSING, 0)),
            "b_ids": _tasks(api, b, (TaskStatus.FAILED, 2), (TaskStatus.QUEUED, 0))}


def _overview(client: httpx.Client, who: Tenant) -> dict:
    resp = client.get("/api/v1/monitoring/overview", headers=who.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_overview_is_the_tenants_own_or_the_fleets(client: httpx.Client, fleet: dict) -> None:
    a, b, op = fleet["a"], fleet["b"], fleet["operator"]
    mine = _overview(client, a)
    assert (mine["scope"], mine["tenant_id"]) == ("tenant", a.name)
    [llm] = mine["types"]
    assert llm == {"task_type": "LLM_INTERACTION", "queued": 0, "running": 1, "completed_last_hour": 2,
                   "failed_last_hour": 0, "p50_ms": 2000, "p95_ms": 2900}
    [running] = mine["running"]
    assert (running["task_id"], running["worker_id"], running["tenant_id"]) == (
        fleet["a_ids"][2], f"w-{a.name}", a.name)

    theirs = _overview(client, b)
    assert theirs["types"][0]["queued"] == 1 and theirs["types"][0]["failed_last_hour"] == 1
    assert theirs["types"][0]["p50_ms"] is None and theirs["running"] == []

    everyone = _overview(client, op)  # the operator's own tenant has no task: the fleet's
    assert (everyone["scope"], everyone["tenant_id"]) == ("fleet", None)
    [llm] = everyone["types"]
    assert (llm["queued"], llm["running"], llm["completed_last_hour"], llm["failed_last_hour"]) == (1, 1, 2, 1)
    assert [r["task_id"] for r in everyone["running"]] == [fleet["a_ids"][2]]
    assert_problem(client.get("/api/v1/monitoring/overview"), 401)


def _listed(client: httpx.Client, who: Tenant, **params: str) -> httpx.Response:
    return client.get("/api/v1/tasks", params={"page_size": "200", **params}, headers=who.headers)


def test_an_operator_lists_and_reads_every_tenants_tasks(client: httpx.Client, fleet: dict) -> None:
    a, b, op = fleet["a"], fleet["b"], fleet["operator"]
    every = _listed(client, op).json()
    assert {t["task_id"] for t in every["items"]} >= {*fleet["a_ids"], *fleet["b_ids"]}
    only_b = _listed(client, op, tenant=b.name).json()
    assert sorted(t["task_id"] for t in only_b["items"]) == sorted(fleet["b_ids"])
    assert {t["origin"]["tenant_id"] for t in only_b["items"]} == {b.name} and only_b["total"] == 2
    assert _listed(client, op, tenant="nobody-at-all").json()["total"] == 0

    # A tenant key: its own tasks, and `tenant` is refused rather than silently ignored.
    assert sorted(t["task_id"] for t in _listed(client, a).json()["items"]) == sorted(fleet["a_ids"])
    body = assert_problem(_listed(client, a, tenant=b.name), 403)
    assert body["type"].endswith("operator-only")
    assert_problem(_listed(client, a, tenant=a.name), 403)

    done = fleet["a_ids"][0]
    for path in (f"/api/v1/tasks/{done}", f"/api/v1/tasks/{done}/result"):
        assert client.get(path, headers=op.headers).status_code == 200, path
        assert_problem(client.get(path, headers=b.headers), 404)  # another tenant: not found
    with client.stream("GET", f"/api/v1/tasks/{done}/events", headers=op.headers) as resp:
        assert resp.status_code == 200
        frames = list(sse_frames(resp.iter_lines()))
    assert [f.get("event") for f in frames][-1] == "end"
    assert [f["data"]["status"] for f in frames if f.get("event") == "status"][-1] == "COMPLETED"
    assert_problem(client.get(f"/api/v1/tasks/{done}/events", headers=b.headers), 404)
    # Reading is not acting: cancelling another tenant's running task is still not found.
    running = fleet["a_ids"][2]
    assert_problem(client.post(f"/api/v1/tasks/{running}/cancel", headers=op.headers), 404)


def test_webhook_deliveries_are_the_tasks_tenants_only(api: ApiStack, client: httpx.Client,
                                                       fleet: dict) -> None:
    a, b, op = fleet["a"], fleet["b"], fleet["operator"]
    tid = fleet["a_ids"][0]
    url = "https://hooks.example/a?token=secret"
    with psycopg.connect(api.db_url, autocommit=True) as conn:  # as the projector queues them
        for state, code in (("delivered", 200), ("failed", 500)):
            conn.execute("INSERT INTO webhook_outbox (subject_kind, subject_id, event_id, url, body,"
                         " state, attempts, last_status_code) VALUES ('task', %s, %s, %s, '{}', %s, %s, %s)",
                         (tid, uuid.uuid4(), url, state, 1 if code == 200 else 5, code))
    resp = client.get(f"/api/v1/tasks/{tid}/webhook-deliveries", headers=a.headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task_id"] == tid
    assert [(d["state"], d["attempts"], d["last_status_code"], d["url"]) for d in body["items"]] == [
        ("delivered", 1, 200, url), ("failed", 5, 500, url)]
    quiet = client.get(f"/api/v1/tasks/{fleet['a_ids'][1]}/webhook-deliveries", headers=a.headers)
    assert quiet.json()["items"] == []
    for other in (b, op):  # the URL may hold a's token: not even an operator reads it
        assert_problem(client.get(f"/api/v1/tasks/{tid}/webhook-deliveries", headers=other.headers), 404)
    assert_problem(client.get(f"/api/v1/tasks/{uuid.uuid4()}/webhook-deliveries",
                              headers=a.headers), 404)
