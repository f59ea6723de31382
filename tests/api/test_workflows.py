"""The workflow API on the real stack (uvicorn, projector, Kafka, PostgreSQL): invalid
workflows are 422 naming the step and the field and send nothing; POST and the commands are
records on the workflows topic; reads, lists, commands and cleanup are tenant-scoped (an
operator key reads all); cleanup deletes only the workflow's own outputs; the monitoring views.
What the processors' engine would write is produced here to the workflows-state topic
(tests/api/test_workflow_engine.py runs the engine itself)."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpu_consumers.storage import StorageSettings
from schemas.codec import EventCodec
from schemas.workflow_events import WorkflowCommandRequested, WorkflowRequested, is_workflow_id
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import assert_problem
from tests.kafka_helpers import read_topic, record_count
from tests.projection.db import workflow_helpers as wh
from tests.projection.db.helpers import wait_for

pytestmark = pytest.mark.integration

PATH = "/api/v1/workflows"


def _mapping(body: dict[str, Any], step: int, **change: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["steps"][step]["input_mappings"][0].update(change)
    return body


def _invalid_bodies() -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """(body, words the 422's detail must name: the step and the field)."""
    good = wh.pipeline_body()
    unknown_type = copy.deepcopy(good)
    unknown_type["steps"][2]["task_type"] = "TELEPORT"
    cycle = copy.deepcopy(good)
    cycle["steps"][0]["depends_on"] = ["adjust"]
    bad_param = copy.deepcopy(good)
    bad_param["steps"][3]["config"]["brightness"] = 7.0
    missing = copy.deepcopy(good)
    missing["steps"][1]["input_mappings"] = []  # base_image_url then comes from nowhere
    duplicate = copy.deepcopy(good)
    duplicate["steps"][1]["id"] = "generate"
    return [
        (unknown_type, ("cutout", "task_type")),
        (cycle, ("depends_on",)),
        (_mapping(good, 1, from_step="nowhere"), ("refine", "from_step")),
        (_mapping(good, 1, from_field="result_colour"), ("refine", "from_field")),
        (_mapping(good, 1, from_step="cutout"), ("refine", "from_step")),  # not an ancestor
        (bad_param, ("adjust", "brightness")),
        (missing, ("refine", "base_image_url")),
        (duplicate, ("generate", "id")),
    ]


def test_an_invalid_workflow_is_422_naming_the_step_and_field_and_sends_nothing(
        api: ApiStack, client: httpx.Client, tenant: Tenant) -> None:
    before = record_count(api.kafka, api.kafka.topics.workflows)
    for body, named in _invalid_bodies():
        problem = assert_problem(client.post(PATH, json=body, headers=tenant.headers), 422)
        assert all(word in problem["detail"] for word in named), (named, problem["detail"])
    shape = assert_problem(client.post(PATH, json={"name": "x", "origin_instance": "t", "steps": []},
                                       headers=tenant.headers), 422)
    assert "steps" in str(shape)
    assert record_count(api.kafka, api.kafka.topics.workflows) == before


def test_post_sends_the_request_and_the_commands_follow_the_lifecycle(
        api: ApiStack, client: httpx.Client, tenant: Tenant, other_tenant: Tenant) -> None:
    before = record_count(api.kafka, api.kafka.topics.workflows)
    resp = client.post(PATH, json=wh.pipeline_body(webhook_url="https://hooks.example.com/w"),
                       params={"start": "true"}, headers=tenant.headers)
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["status"] == "START_REQUESTED" and resp.headers["location"] == f"{PATH}/{started['workflow_id']}"
    assert started["step_ids"] == ["generate", "refine", "cutout", "adjust"]
    created = client.post(PATH, json=wh.pipeline_body("later"), headers=tenant.headers).json()
    assert created["status"] == "CREATED"
    codec = EventCodec()
    records = [m for m in read_topic(api.kafka, api.kafka.topics.workflows, expect=before + 2)
               if m.key().decode() in (started["workflow_id"], created["workflow_id"])]
    requests = {r.workflow_id: r for r in (codec.decode(m.value()) for m in records)}
    first = requests[started["workflow_id"]]
    assert isinstance(first, WorkflowRequested) and first.start is True
    assert first.origin_tenant_id == tenant.name and first.webhook_url == "https://hooks.example.com/w"
    assert first.spec.model_dump(mode="json") == wh.spec().model_dump(mode="json")
    assert requests[created["workflow_id"]].start is False
    assert {m.key().decode() for m in records} == set(requests)

    # The commands check the read model: the engine's state is produced here.
    spec, wid = wh.spec(), created["workflow_id"]
    wh.produce_states(api.kafka, [wh.state(spec, workflow_id=wid, tenant=tenant.name, status="CREATED",
                                           running=False)])
    wait_for(lambda: client.get(f"{PATH}/{wid}", headers=tenant.headers).status_code == 200,
             what="CREATED projected")
    assert client.post(f"{PATH}/{wid}/pause", headers=tenant.headers).status_code == 409
    assert client.post(f"{PATH}/{wid}/resume", headers=tenant.headers).status_code == 409
    assert_problem(client.post(f"{PATH}/{wid}/start", headers=other_tenant.headers), 404)
    start = client.post(f"{PATH}/{wid}/start", headers=tenant.headers)
    assert start.status_code == 202 and start.json()["status"] == "CREATED", start.text
    wh.produce_states(api.kafka, [wh.state(spec, workflow_id=wid, tenant=tenant.name, version=2)])
    wait_for(lambda: client.post(f"{PATH}/{wid}/pause", headers=tenant.headers).status_code == 202,
             what="pause accepted once RUNNING is projected")
    wh.produce_states(api.kafka, [wh.state(spec, workflow_id=wid, tenant=tenant.name, version=3,
                                           status="PAUSED", done=1, running=False)])
    wait_for(lambda: client.post(f"{PATH}/{wid}/resume", headers=tenant.headers).status_code == 202,
             what="resume accepted once PAUSED is projected")
    assert client.post(f"{PATH}/{wid}/cancel", headers=tenant.headers).status_code == 202
    wh.produce_states(api.kafka, [wh.state(spec, workflow_id=wid, tenant=tenant.name, version=4,
                                           status="CANCELLED", done=1, running=False)])
    wait_for(lambda: client.get(f"{PATH}/{wid}", headers=tenant.headers).json()["status"] == "CANCELLED",
             what="CANCELLED projected")
    assert_problem(client.post(f"{PATH}/{wid}/cancel", headers=tenant.headers), 409)
    # one workflow's records share its partition, in the order sent
    commands = [codec.decode(m.value()) for m in read_topic(api.kafka, api.kafka.topics.workflows,
                                                             expect=before + 6)
                if m.key().decode() == wid][1:]
    assert all(isinstance(c, WorkflowCommandRequested) and c.workflow_id == wid for c in commands)
    assert [c.command.value for c in commands] == ["START", "PAUSE", "RESUME", "CANCEL"]
    assert {c.requested_by for c in commands} == {f"api-key:{tenant.key_id}"}


def test_reads_and_lists_are_tenant_scoped_and_an_operator_reads_all(
        api: ApiStack, client: httpx.Client, tenant: Tenant, other_tenant: Tenant,
        operator: Tenant) -> None:
    spec = wh.spec()
    mine = [wh.state(spec, tenant=tenant.name, status="COMPLETED", done=4, version=5),
            wh.state(spec, tenant=tenant.name, version=2, done=1)]
    theirs = wh.state(spec, tenant=other_tenant.name, status="FAILED", done=1, running=False, failed=True)
    wh.produce_states(api.kafka, [*mine, theirs])
    done = mine[0].workflow_id
    wait_for(lambda: client.get(f"{PATH}/{theirs.workflow_id}", headers=other_tenant.headers).status_code == 200
             and client.get(f"{PATH}/{mine[1].workflow_id}", headers=tenant.headers).status_code == 200,
             what="the workflows projected")
    got = client.get(f"{PATH}/{done}", params={"wait": 5}, headers=tenant.headers).json()
    assert got["status"] == "COMPLETED" and got["steps_total"] == 4 and got["steps_completed"] == 4
    assert [(s["id"], s["status"], s["attempt"]) for s in got["steps"]] == [
        (s.step_id, "COMPLETED", 1) for s in mine[0].steps]
    assert got["steps"][1]["result"]["result_image_url"] == mine[0].step("refine").result.result_image_url
    assert got["steps"][1]["input_mappings"] == [
        {"from_step": "generate", "from_field": "result_image_url", "to_field": "base_image_url"}]
    assert got["links"]["tasks"] == [f"/api/v1/tasks/{s.task_id}" for s in mine[0].steps]
    failed = client.get(f"{PATH}/{theirs.workflow_id}", headers=other_tenant.headers).json()
    assert failed["steps"][1]["error"] == {"code": "INVALID_INPUT", "message": "the image is empty"}
    assert failed["failed_step"] == "refine" and got["failed_step"] is None

    assert_problem(client.get(f"{PATH}/{theirs.workflow_id}", headers=tenant.headers), 404)
    assert client.get(f"{PATH}/{theirs.workflow_id}", headers=operator.headers).status_code == 200
    page = client.get(PATH, headers=tenant.headers).json()
    assert {w["workflow_id"] for w in page["items"]} == {w.workflow_id for w in mine} and page["total"] == 2
    running = client.get(PATH, params={"status": "RUNNING"}, headers=tenant.headers).json()
    assert [w["workflow_id"] for w in running["items"]] == [mine[1].workflow_id]
    paged = client.get(PATH, params={"page_size": 1, "page": 2}, headers=tenant.headers).json()
    assert len(paged["items"]) == 1 and paged["total"] == 2
    assert_problem(client.get(PATH, params={"tenant": other_tenant.name}, headers=tenant.headers), 403)
    theirs_listed = client.get(PATH, params={"tenant": other_tenant.name}, headers=operator.headers).json()
    assert [w["workflow_id"] for w in theirs_listed["items"]] == [theirs.workflow_id]
    assert_problem(client.get(PATH, params={"status": "DONE"}, headers=tenant.headers), 422)
    # commands and cleanup act on the key's own tenant's workflows only, an operator's too
    assert_problem(client.post(f"{PATH}/{theirs.workflow_id}/cleanup", headers=operator.headers), 404)
    assert_problem(client.post(f"{PATH}/{mine[1].workflow_id}/cancel", headers=other_tenant.headers), 404)

    monitor = client.get("/api/v1/monitoring/workflows", headers=tenant.headers).json()
    assert [w["workflow_id"] for w in monitor["active"]] == [mine[1].workflow_id]
    assert monitor["active"][0]["steps"] == {"COMPLETED": 1, "RUNNING": 1, "PENDING": 2}
    assert monitor["by_status"] == {"COMPLETED": 1, "RUNNING": 1}
    stats = client.get("/api/v1/monitoring/workflows/stats", headers=tenant.headers).json()
    assert stats["total"] == 2 and stats["failure_rate"] == 0.0 and stats["p50_ms"] == 5000.0
    assert stats["steps_by_task_type"] == {"GENERATION": 2, "REFINE": 2, "BACKGROUND_REMOVE": 2, "IMAGE_ADJUSTER": 2}
    fleet = client.get("/api/v1/monitoring/workflows/stats", headers=operator.headers).json()
    assert fleet["total"] >= 3 and fleet["by_status"].get("FAILED", 0) >= 1


def test_cleanup_deletes_only_the_workflows_own_outputs(
        api: ApiStack, client: httpx.Client, tenant: Tenant, tmp_path: Path) -> None:
    root = tmp_path / "results"
    api.app.state.workflow_storage_settings = StorageSettings(results_url=root.as_uri())
    spec = wh.spec()
    first = wh.state(spec, tenant=tenant.name, version=1)
    wid = first.workflow_id
    outputs, results = [], {}
    task_ids = {s.step_id: str(uuid.uuid5(uuid.UUID(wid), s.step_id)) for s in first.steps}  # as wh.state
    for step in first.steps:
        path = root / tenant.name / task_ids[step.step_id] / "1" / "output.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"png")
        outputs.append(path)
        results[step.step_id] = path.as_uri()
    foreign = root / "someone-else" / task_ids["cutout"] / "1" / "output.png"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"png")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    results["cutout"] = foreign.as_uri()  # a result naming another tenant's folder
    results["adjust"] = outside.as_uri()  # and one outside the store
    wh.produce_states(api.kafka, [first])
    wait_for(lambda: client.get(f"{PATH}/{wid}", headers=tenant.headers).status_code == 200,
             what="the workflow projected")
    assert_problem(client.post(f"{PATH}/{wid}/cleanup", headers=tenant.headers), 409)  # not ended

    wh.produce_states(api.kafka, [wh.state(spec, workflow_id=wid, tenant=tenant.name, version=2,
                                           status="COMPLETED", done=4, results=results)])
    wait_for(lambda: client.get(f"{PATH}/{wid}", headers=tenant.headers).json()["status"] == "COMPLETED",
             what="COMPLETED projected")
    resp = client.post(f"{PATH}/{wid}/cleanup", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert sorted(answer["deleted"]) == sorted([results["generate"], results["refine"]])
    assert {r["url"] for r in answer["not_deleted"]} == {foreign.as_uri(), outside.as_uri()}
    assert not outputs[0].exists() and not outputs[1].exists()
    assert not outputs[0].parent.parent.exists()  # the task's emptied folders go too
    assert foreign.exists() and outside.exists() and outputs[2].exists()
    again = client.post(f"{PATH}/{wid}/cleanup", headers=tenant.headers).json()  # repeatable
    assert sorted(again["deleted"]) == sorted(answer["deleted"])


def test_an_idempotency_key_names_one_workflow_per_tenant(
        api: ApiStack, client: httpx.Client, tenant: Tenant, other_tenant: Tenant) -> None:
    body = wh.pipeline_body("keyed")
    keyed = {**tenant.headers, "Idempotency-Key": "order-42"}
    first = client.post(PATH, json=body, headers=keyed).json()
    again = client.post(PATH, json=body, headers=keyed).json()  # not recorded yet: sent again
    wid = first["workflow_id"]
    assert again["workflow_id"] == wid and is_workflow_id(wid) and first["idempotent_replay"] is False
    theirs = client.post(PATH, json=body, headers={**other_tenant.headers, "Idempotency-Key": "order-42"})
    assert theirs.json()["workflow_id"] != wid  # keys are per tenant
    # the engine records it (its state, produced here); then a repeat is answered from it
    wh.produce_states(api.kafka, [wh.state(wh.spec(name="keyed"), workflow_id=wid, tenant=tenant.name,
                                           status="CREATED", running=False)])
    wait_for(lambda: client.get(f"{PATH}/{wid}", headers=tenant.headers).status_code == 200,
             what="the keyed workflow projected")
    before = record_count(api.kafka, api.kafka.topics.workflows)
    replay = client.post(PATH, json=body, headers=keyed)
    assert replay.status_code == 202 and replay.json()["workflow_id"] == wid
    assert replay.json()["idempotent_replay"] is True
    assert record_count(api.kafka, api.kafka.topics.workflows) == before  # nothing sent
    other = client.post(PATH, json={**body, "name": "another"}, headers=keyed)
    assert assert_problem(other, 409)["type"].endswith("idempotency-key-reused")
