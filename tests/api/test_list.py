"""GET /tasks: each filter, paging and sorting checked against known data."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from schemas.enums import TaskStatus, TaskType
from tests.api.conftest import ApiStack, Tenant
from tests.projection.db.helpers import T0, lifecycle, produce, submitted, wait_for

pytestmark = pytest.mark.integration

# (task type, final status, origin instance, origin zone, provider) of the known tasks; task i
# is created at T0 + i hours.
KNOWN = [
    (TaskType.GENERATION, TaskStatus.COMPLETED, "web-1", "eu", "diffusers"),
    (TaskType.GENERATION, TaskStatus.FAILED, "web-1", "us", "diffusers"),
    (TaskType.LLM_INTERACTION, TaskStatus.COMPLETED, "web-2", "eu", "transformers"),
    (TaskType.BACKGROUND_REMOVE, TaskStatus.QUEUED, "web-2", "us", "classical"),
    (TaskType.BACKGROUND_REMOVE, TaskStatus.PROCESSING, "batch", "eu", "classical"),
    (TaskType.LLM_INTERACTION, TaskStatus.PENDING, "batch", "us", None),
    (TaskType.GENERATION, TaskStatus.COMPLETED, "web-1", "eu", "classical"),
]
PARAMS = {
    TaskType.GENERATION: {"prompt": "a coat"},
    TaskType.LLM_INTERACTION: {"prompt": "caption"},
    TaskType.BACKGROUND_REMOVE: {"image_url": "file:///in/a.png"},
}


@pytest.fixture
def known(api: ApiStack, tenant: Tenant) -> list[str]:
    """The KNOWN tasks for ``tenant`` (ids in KNOWN order), projected."""
    ids = [str(uuid.uuid4()) for _ in KNOWN]
    events = []
    for i, (tid, (task_type, final, instance, zone, provider)) in enumerate(zip(ids, KNOWN)):
        origin = {"tenant": tenant.name, "instance": instance, "zone": zone}
        params = {**PARAMS[task_type], "provider_type": provider}
        start = T0 + timedelta(hours=i)
        events.append(submitted(tid, at=start, task_type=task_type, params=params, **origin))
        events += [e.model_copy(update={"envelope": e.envelope.model_copy(
            update={"task_type": task_type})}) for e in lifecycle(tid, start=start, final=final,
                                                                   **origin)]
    produce(api.kafka, events)
    from tests.projection.db.helpers import task_row

    wait_for(lambda: all((task_row(api.db_url, t) or {}).get("status") == k[1].value
                         and (task_row(api.db_url, t) or {}).get("params") is not None
                         for t, k in zip(ids, KNOWN)), what="the known tasks projected")
    return ids


def _ids(client: httpx.Client, tenant: Tenant, **params: object) -> list[str]:
    resp = client.get("/api/v1/tasks", headers=tenant.headers, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return [item["task_id"] for item in body["items"]]


def _expect(ids: list[str], pick, newest_first: bool = True) -> list[str]:
    chosen = [tid for tid, k in zip(ids, KNOWN) if pick(k)]
    return list(reversed(chosen)) if newest_first else chosen


def test_each_filter(client: httpx.Client, tenant: Tenant, known: list[str]) -> None:
    assert _ids(client, tenant) == _expect(known, lambda k: True)  # default: created_at desc
    assert _ids(client, tenant, status="COMPLETED") == _expect(known, lambda k: k[1] is TaskStatus.COMPLETED)
    assert _ids(client, tenant, task_type="GENERATION") == _expect(known, lambda k: k[0] is TaskType.GENERATION)
    assert _ids(client, tenant, provider_type="classical") == _expect(known, lambda k: k[4] == "classical")
    assert _ids(client, tenant, origin_instance="web-2") == _expect(known, lambda k: k[2] == "web-2")
    assert _ids(client, tenant, origin_zone="us") == _expect(known, lambda k: k[3] == "us")
    assert _ids(client, tenant, origin_tenant_id=tenant.name) == _expect(known, lambda k: True)
    after, before = (T0 + timedelta(hours=2)).isoformat(), (T0 + timedelta(hours=5)).isoformat()
    assert _ids(client, tenant, created_after=after) == list(reversed(known[2:]))
    assert _ids(client, tenant, created_before=before) == list(reversed(known[:5]))
    assert _ids(client, tenant, created_after=after, created_before=before) == list(reversed(known[2:5]))
    assert _ids(client, tenant, search=known[3][:8]) == [known[3]]
    assert _ids(client, tenant, search=known[3][:8].upper()) == [known[3]]
    assert _ids(client, tenant, status="COMPLETED", origin_zone="eu", task_type="GENERATION") == [
        known[6], known[0]]


def test_paging_sorting_and_total(client: httpx.Client, tenant: Tenant, known: list[str]) -> None:
    pages = []
    for page in (1, 2, 3, 4):
        resp = client.get("/api/v1/tasks", headers=tenant.headers,
                          params={"page": page, "page_size": 3, "sort_order": "asc"})
        body = resp.json()
        assert body["total"] == len(KNOWN) and body["page"] == page and body["page_size"] == 3
        pages.append([i["task_id"] for i in body["items"]])
    assert pages == [known[0:3], known[3:6], known[6:7], []]
    assert _ids(client, tenant)[:2] == [known[6], known[5]]
    by_status = client.get("/api/v1/tasks", headers=tenant.headers,
                           params={"sort_by": "status", "sort_order": "asc"}).json()["items"]
    statuses = [i["status"] for i in by_status]
    assert statuses == sorted(statuses)
    default = client.get("/api/v1/tasks", headers=tenant.headers).json()
    assert default["page"] == 1 and default["page_size"] == 50
    item = next(i for i in default["items"] if i["task_id"] == known[2])
    assert item["task_type"] == "LLM_INTERACTION" and item["provider_type"] == "transformers"
    assert item["origin"] == {"instance": "web-2", "zone": "eu", "tenant_id": tenant.name, "version": None}
