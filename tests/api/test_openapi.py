"""The OpenAPI document is valid, and every operation in it answers as documented; plus the
operational routes (health, readiness, metrics)."""

from __future__ import annotations

import re

import httpx
import pytest
from openapi_spec_validator import validate

from schemas.enums import TaskStatus, TaskType
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import run_task, submit, wait_status
from tests.projection.db import generation_helpers as gh
from tests.projection.db import workflow_helpers as wh
from tests.projection.db.helpers import wait_for

pytestmark = pytest.mark.integration

GOOD = {"task_type": "DETAIL_ENHANCER", "base_image_url": "file:///in/a.png", "strength": 0.4}


def test_the_document_is_valid_openapi(client: httpx.Client, api: ApiStack) -> None:
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    validate(doc)
    assert doc == api.app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    submit_schema = doc["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(submit_schema["oneOf"]) == len(TaskType)  # one submit model per task type


def test_every_operation_answers_as_documented(api: ApiStack, client: httpx.Client,
                                               tenant: Tenant, operator: Tenant) -> None:
    done = submit(client, tenant, GOOD).json()["task_id"]
    queued = submit(client, tenant, GOOD).json()["task_id"]
    wait_status(client, tenant, queued, "QUEUED")
    wait_status(client, tenant, done, "QUEUED")
    run_task(api, tenant, done, TaskType.DETAIL_ENHANCER, (TaskStatus.PROCESSING, 0.5),
             (TaskStatus.COMPLETED, None))
    wait_status(client, tenant, done, "COMPLETED")
    subject = client.post("/api/v1/catalog/subjects", headers=tenant.headers,
                          json={"name": "Anna", "lora_ref": "loras/anna", "default_weight": 0.8}).json()
    generation = gh.base_record(gh.plan(), tenant=tenant.name)
    gh.produce_records(api.kafka, [generation])
    wait_for(lambda: client.get(f"/api/v1/generations/{generation.generation_id}",
                                headers=tenant.headers).status_code == 200, what="the generation")
    # One workflow in each status a route needs (the processors' records, produced here).
    wspec = wh.spec()
    workflows = {status: wh.state(wspec, tenant=tenant.name, status=status, version=2,
                                  done=4 if status == "COMPLETED" else 0,
                                  running=status == "RUNNING")
                 for status in ("CREATED", "RUNNING", "PAUSED", "COMPLETED")}
    wh.produce_states(api.kafka, workflows.values())
    wait_for(lambda: all(client.get(f"/api/v1/workflows/{w.workflow_id}", headers=tenant.headers)
                         .status_code == 200 for w in workflows.values()), what="the workflows")
    workflow_for = {f"/api/v1/workflows/{{workflow_id}}/{action}": workflows[status].workflow_id
                    for action, status in (("start", "CREATED"), ("pause", "RUNNING"),
                                           ("resume", "PAUSED"), ("cancel", "RUNNING"))}
    bodies = {**gh.route_bodies(subject["id"]), "/api/v1/workflows": wh.pipeline_body(),
              "/api/v1/catalog/{kind}": {"name": "Studio", "lora_ref": "loras/s", "default_weight": 0.5},
              "/api/v1/generations/{generation_id}/cancel": {"reason": "not needed"}}
    path_values = {"generation_id": generation.generation_id, "kind": "subjects",
                   "entry_id": subject["id"]}

    doc = api.app.openapi()
    visited = set()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            task_id = queued if path.endswith("/cancel") else done
            url = re.sub(r"\{task_id\}", task_id, path)
            url = url.replace("{workflow_id}", workflow_for.get(path, workflows["COMPLETED"].workflow_id))
            url = re.sub(r"\{(\w+)\}", lambda m: path_values[m[1]], url)
            body = bodies.get(path, GOOD) if method == "post" and "requestBody" in op else None
            needs_key = "security" in op
            # Fleet-wide routes: an operator key. GET /tasks documents 403 for its operator-only
            # `tenant` filter, checked below; without it a tenant key lists its own tasks.
            fleet_filter = (method, path) in (("get", "/api/v1/tasks"), ("get", "/api/v1/workflows"))
            operator_only = "403" in op["responses"] and not fleet_filter
            headers = (operator if operator_only else tenant).headers if needs_key else {}
            resp = client.request(method.upper(), url, json=body, headers=headers)
            documented = {int(code) for code in op["responses"] if code.isdigit()}
            assert resp.status_code in documented, (method, path, resp.status_code, resp.text)
            assert resp.status_code < 300, (method, path, resp.status_code, resp.text)
            content = op["responses"][str(resp.status_code)].get("content", {})
            media = resp.headers["content-type"].split(";")[0]
            assert not content or media in content, (method, path, media, list(content))
            if needs_key:  # and every keyed route refuses a request without one
                assert client.request(method.upper(), url, json=body).status_code == 401
            if operator_only:  # and a tenant key
                assert client.request(method.upper(), url, json=body,
                                      headers=tenant.headers).status_code == 403
            if fleet_filter:
                assert client.get(url, params={"tenant": operator.name},
                                  headers=tenant.headers).status_code == 403
            visited.add((method, path))
    assert visited == {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert {p for _, p in visited} >= {"/api/v1/tasks", "/api/v1/tasks/{task_id}",
                                       "/api/v1/tasks/{task_id}/result",
                                       "/api/v1/tasks/{task_id}/cancel",
                                       "/api/v1/tasks/{task_id}/events", "/healthz", "/readyz",
                                       "/metrics", "/api/v1/generations",
                                       "/api/v1/generations/{generation_id}",
                                       "/api/v1/generations/{generation_id}/cancel",
                                       "/api/v1/catalog/{kind}", "/api/v1/catalog/{kind}/{entry_id}",
                                       *gh.route_bodies("-")}


def test_health_readiness_and_metrics(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                      operator: Tenant) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "kafka": "ok"}}

    tid = submit(client, tenant, {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///a.png"}).json()["task_id"]
    failed = submit(client, tenant, {"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///b.png"}).json()["task_id"]
    wait_status(client, tenant, tid, "QUEUED")
    wait_status(client, tenant, failed, "QUEUED")
    run_task(api, tenant, tid, TaskType.IMAGE_ADJUSTER, (TaskStatus.PROCESSING, 0.1),
             (TaskStatus.COMPLETED, None))
    from schemas.enums import ErrorCode
    from tests.api.helpers import now
    from tests.projection.db.helpers import produce, status

    produce(api.kafka, [status(failed, TaskStatus.FAILED, at=now(), task_type=TaskType.IMAGE_ADJUSTER,
                               code=ErrorCode.CONTENT_POLICY, tenant=tenant.name)])
    wait_status(client, tenant, tid, "COMPLETED")
    wait_status(client, tenant, failed, "FAILED")
    text = client.get("/metrics", headers=operator.headers).text
    assert re.search(r'^compute_api_submits_total\{task_type="IMAGE_ADJUSTER"\} [1-9]', text, re.M)
    assert re.search(r'^compute_tasks_completed_total\{task_type="IMAGE_ADJUSTER"\} 1\.0$', text, re.M)
    assert re.search(r'^compute_tasks_failed_total\{error_code="CONTENT_POLICY",'
                     r'task_type="IMAGE_ADJUSTER"\} 1\.0$', text, re.M)
    assert re.search(r'^compute_task_processing_seconds_bucket\{le="\+Inf",'
                     r'task_type="IMAGE_ADJUSTER"\} 1\.0$', text, re.M)
    assert re.search(r'^compute_task_processing_seconds_count\{task_type="IMAGE_ADJUSTER"\} 1\.0$',
                     text, re.M)
    assert "compute_read_model_up 1.0" in text
