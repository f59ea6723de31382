"""The generation API end to end: real uvicorn, projector, Kafka and PostgreSQL. POSTs are read
back from the generations topic; GETs read what the projector made of GenerationRecord documents
this test produces to the generations-state topic (as the processors would)."""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import httpx
import pytest

from generations.agentic import attempt_task_id
from generations.plan import GENERATION_CANCEL_CONTENT_TYPE, GENERATION_REQUEST_CONTENT_TYPE, GenerationCancelRequested, GenerationRequested
from projection.db.catalog import PostgresCatalog
from tests.api.conftest import ApiStack, Tenant, new_tenant
from tests.api.helpers import assert_problem
from tests.kafka_helpers import read_topic, record_count
from tests.projection.db import generation_helpers as gh
from tests.projection.db.helpers import wait_for

pytestmark = pytest.mark.integration

STRATEGIES = {"/api/v1/generations": "GENERATE", "/api/v1/generations/edit": "EDITING",
              "/api/v1/generations/refine": "REFINE", "/api/v1/generations/video": "VIDEO",
              "/api/v1/generations/background-fix": "BACKGROUND_FIXING",
              "/api/v1/generations/image-adjuster": "IMAGE_ADJUSTING",
              "/api/v1/generations/face-fixer": "FACE_FIXING"}
AGENTIC = {"strategy": "GENERATE", "generation_type": "AGENTIC", "subject_id": gh.SUBJECT_ID,
           "shot_type_string": "full-body shot", "seed": 7}


@pytest.fixture(scope="module")
def subject_id(api: ApiStack) -> str:
    """A subject in the module database's catalog (the planner resolves ids against it)."""
    return PostgresCatalog(api.db_url).add_subject("Anna", "loras/anna", 0.8).id


def _post(client: httpx.Client, tenant: Tenant, path: str, body: Any, *,
          key: str | None = None) -> httpx.Response:
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(path, json=body, headers=headers)


def _requests(api: ApiStack, expect: int) -> dict[str, tuple[GenerationRequested, Any]]:
    topic = api.kafka.topics.generations
    records = read_topic(api.kafka, topic, expect=expect)
    out = {}
    for msg in records:
        if dict(msg.headers())["content-type"] == GENERATION_CANCEL_CONTENT_TYPE:
            continue  # a cancel (below)
        requested = GenerationRequested.model_validate_json(msg.value())
        assert msg.key().decode() == requested.plan.generation_id
        assert dict(msg.headers())["content-type"] == GENERATION_REQUEST_CONTENT_TYPE
        out[requested.plan.generation_id] = (requested, msg)
    return out


def _get(client: httpx.Client, tenant: Tenant, gid: str) -> httpx.Response:
    return client.get(f"/api/v1/generations/{gid}", headers=tenant.headers)


def _wait_version(client: httpx.Client, tenant: Tenant, gid: str, version: int) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        resp = _get(client, tenant, gid)
        return resp.json() if resp.status_code == 200 and resp.json()["version"] == version else None

    return wait_for(seen, what=f"generation {gid} at version {version}")


# --------------------------------------------------------------------------- POST


def test_each_strategy_route_produces_its_plan(api: ApiStack, client: httpx.Client,
                                              tenant: Tenant, subject_id: str) -> None:
    before = record_count(api.kafka, api.kafka.topics.generations)
    answers = {}
    for path, body in gh.route_bodies(subject_id).items():
        resp = _post(client, tenant, path, body)
        assert resp.status_code == 202, (path, resp.text)
        answer = resp.json()
        assert answer["strategy"] == STRATEGIES[path] and answer["idempotent_replay"] is False
        assert resp.headers["location"] == answer["links"]["self"] == f"/api/v1/generations/{answer['generation_id']}"
        answers[path] = answer
    sent = _requests(api, before + len(answers))
    for path, answer in answers.items():
        requested, _ = sent[answer["generation_id"]]
        plan = requested.plan
        assert plan.request.strategy.value == STRATEGIES[path]
        assert requested.origin_tenant_id == tenant.name
        assert answer["task_ids"] == [t.task_id for t in plan.tasks]
        assert answer["links"]["tasks"] == [f"/api/v1/tasks/{t}" for t in answer["task_ids"]]
        assert answer["follow_up_task_ids"] == [f.task_id for f in plan.follow_ups]

    generate = sent[answers["/api/v1/generations"]["generation_id"]][0]
    assert generate.webhook_url == "https://hooks.example.com/generations"
    assert [t.params.seed for t in generate.plan.tasks] == [5, 6]
    assert generate.plan.loras["subject"].id == subject_id
    assert all(t.params.subject_lora_weight == 0.8 for t in generate.plan.tasks)
    assert generate.plan.tasks[0].params.prompt == "full-body shot of Anna"
    edit = answers["/api/v1/generations/edit"]
    assert len(edit["follow_up_task_ids"]) == 1  # PRODUCT_ENHANCEMENT: DETAIL_ENHANCER follow-up
    refine = sent[answers["/api/v1/generations/refine"]["generation_id"]][0].plan
    assert refine.refine is not None and list(refine.refine.task_ids) == answers["/api/v1/generations/refine"]["task_ids"]
    face = sent[answers["/api/v1/generations/face-fixer"]["generation_id"]][0].plan
    [task] = face.tasks
    assert task.orchestration.generation_type.value == "AGENTIC" and task.orchestration.max_attempts == 2
    assert task.task_id == attempt_task_id(task.orchestration.shot_id, 1)
    metrics = client.get("/metrics", headers=new_tenant(api, operator=True).headers).text
    assert re.search(r'^compute_api_generation_submits_total\{generation_type="AGENTIC",'
                     r'strategy="FACE_FIXING"\} [1-9]', metrics, re.M), metrics


def test_a_prompt_step_answers_with_the_prompt_task(api: ApiStack, client: httpx.Client,
                                                   tenant: Tenant, subject_id: str) -> None:
    resp = _post(client, tenant, "/api/v1/generations",
                 {"subject_id": subject_id, "shot_type_string": "portrait", "batch_size": 3,
                  "auto_generate_prompt": True})
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["prompt_task_id"] and len(answer["task_ids"]) == 3
    assert answer["links"]["tasks"][0] == f"/api/v1/tasks/{answer['prompt_task_id']}"


@pytest.mark.parametrize(("path", "body", "status", "where"), [
    ("/api/v1/generations", {"shot_type_string": "x", "colour": "red"}, 422, ["body", "colour"]),
    ("/api/v1/generations/refine", {"base_image_url": "file:///a.png", "batch_size": 0}, 422,
     ["body", "batch_size"]),
    ("/api/v1/generations/face-fixer", {"base_image_url": "file:///a.png", "strength": 1.5}, 422,
     ["body", "strength"]),
    ("/api/v1/generations/video", {"base_image_url": "file:///a.png", "generation_type": "AGENTIC"},
     422, ["body"]),
    ("/api/v1/generations/image-adjuster", {"base_image_url": "file:///a.png",
                                            "min_confidence_score": 2}, 422,
     ["body", "min_confidence_score"]),
    ("/api/v1/generations/edit", {"tool": "EDIT"}, 422, ["body", "base_img_path"]),
    ("/api/v1/generations/background-fix", {"base_image_url": "file:///a.png",
                                            "strategy": "BACKGROUND_FIXING"}, 422, ["body"]),
    ("/api/v1/generations/refine", {"base_image_url": "ftp://a.example/a.png"}, 422,
     ["body", "base_image_url"]),
    ("/api/v1/generations/video", {"base_image_url": "file:///a.png",
                                   "webhook_url": "file:///etc/passwd"}, 422, ["body", "webhook_url"]),
])
def test_bad_bodies_are_refused_before_anything_is_sent(
    api: ApiStack, client: httpx.Client, tenant: Tenant, path: str, body: dict, status: int,
    where: list,
) -> None:
    before = record_count(api.kafka, api.kafka.topics.generations)
    problem = assert_problem(_post(client, tenant, path, body), status)
    assert problem["type"].endswith(":validation-error") and problem["instance"] == path
    assert [e["loc"][: len(where)] for e in problem["errors"]].count(where) >= 1, problem
    assert record_count(api.kafka, api.kafka.topics.generations) == before


def test_unknown_catalog_ids_missing_fields_keys_and_json(api: ApiStack, client: httpx.Client,
                                                         tenant: Tenant, subject_id: str) -> None:
    before = record_count(api.kafka, api.kafka.topics.generations)
    product, style = str(uuid.uuid4()), str(uuid.uuid4())
    problem = assert_problem(_post(client, tenant, "/api/v1/generations", {
        "subject_id": subject_id, "product_id": product, "style_id": style,
        "shot_type_string": "full-body shot"}), 422)
    assert problem["type"].endswith(":unknown-catalog-entry")
    assert f"product {product}" in problem["detail"] and f"style {style}" in problem["detail"]
    problem = assert_problem(_post(client, tenant, "/api/v1/generations", {
        "shot_type_string": "full-body shot"}), 422)  # neither subject_id nor product_id
    assert "subject_id or product_id" in problem["detail"]
    problem = assert_problem(_post(client, tenant, "/api/v1/generations", {"subject_id": subject_id}), 422)
    assert ["body", "shot_type_string"] in [e["loc"] for e in problem["errors"]]
    body = gh.route_bodies(subject_id)["/api/v1/generations/video"]
    assert_problem(client.post("/api/v1/generations/video", json=body), 401)
    assert_problem(client.post("/api/v1/generations/video", json=body,
                               headers={"Authorization": "Bearer csk_nope_nope"}), 401)
    assert_problem(client.post("/api/v1/generations/video", content=b"{not json",
                               headers={**tenant.headers, "Content-Type": "application/json"}), 400)
    assert record_count(api.kafka, api.kafka.topics.generations) == before


def test_idempotency_key_names_one_generation(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                              other_tenant: Tenant, subject_id: str) -> None:
    body = gh.route_bodies(subject_id)["/api/v1/generations"]
    before = record_count(api.kafka, api.kafka.topics.generations)
    first = _post(client, tenant, "/api/v1/generations", body, key="order-42")
    again = _post(client, tenant, "/api/v1/generations", body, key="order-42")
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json()["idempotent_replay"] is True and first.json()["idempotent_replay"] is False
    assert {k: v for k, v in again.json().items() if k != "idempotent_replay"} == \
        {k: v for k, v in first.json().items() if k != "idempotent_replay"}
    assert record_count(api.kafka, api.kafka.topics.generations) == before + 1
    reused = _post(client, tenant, "/api/v1/generations", {**body, "seed": 99}, key="order-42")
    assert assert_problem(reused, 409)["type"].endswith(":idempotency-key-reused")
    theirs = _post(client, other_tenant, "/api/v1/generations", body, key="order-42")
    assert theirs.status_code == 202 and theirs.json()["generation_id"] != first.json()["generation_id"]
    assert record_count(api.kafka, api.kafka.topics.generations) == before + 2


# --------------------------------------------------------------------------- GET


def test_an_agentic_generation_shows_every_attempt(api: ApiStack, client: httpx.Client,
                                                  tenant: Tenant, other_tenant: Tenant) -> None:
    record = gh.agentic_record(gh.plan(AGENTIC), tenant=tenant.name)
    gh.produce_records(api.kafka, [record])
    gen = _wait_version(client, tenant, record.generation_id, record.version)
    assert gen["status"] == "COMPLETED" and gen["generation_type"] == "AGENTIC"
    assert gen["origin"]["tenant_id"] == tenant.name and gen["completed_at"] is not None
    [prediction] = gen["predictions"]
    shot = prediction["shot"]
    attempts = shot["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["score"] for a in attempts] == list(gh.SCORES)
    assert [a["reasons"] for a in attempts] == [list(r) for r in gh.REASONS]
    assert [a["decision"] for a in attempts] == ["RETRY", "RETRY", "ACCEPT_BEST"]
    assert all(a["status"] == "COMPLETED" and a["result"]["result_image_url"] for a in attempts)
    assert shot["decision"] == "ACCEPT_BEST" and shot["accepted_attempt"] == 2 and shot["done"]
    assert shot["accepted_task_id"] == attempts[1]["task_id"] == prediction["task_id"]
    assert prediction["status"] == "COMPLETED"
    assert prediction["result"]["result_image_url"].endswith(f"{attempts[1]['task_id']}.png")
    assert prediction["task_ids"] == [a["task_id"] for a in attempts]
    assert gen["links"]["tasks"] == [f"/api/v1/tasks/{a['task_id']}" for a in attempts]
    assert re.search(r'^compute_generations\{generation_type="AGENTIC",status="COMPLETED",'
                     r'strategy="GENERATE"\} [1-9]', client.get("/metrics", headers=new_tenant(api, operator=True).headers).text, re.M)

    # Another tenant's generation does not exist for the caller; neither does a non-UUID.
    assert_problem(_get(client, other_tenant, record.generation_id), 404)
    assert_problem(_get(client, tenant, "not-a-uuid"), 404)
    assert_problem(_get(client, tenant, str(uuid.uuid4())), 404)
    assert_problem(client.get(f"/api/v1/generations/{record.generation_id}"), 401)


def test_an_older_record_never_regresses_the_generation(api: ApiStack, client: httpx.Client,
                                                       tenant: Tenant) -> None:
    p = gh.plan(AGENTIC)
    newest, older = gh.agentic_record(p, tenant=tenant.name), gh.agentic_record(p, tenant=tenant.name, attempts=1)
    gh.produce_records(api.kafka, [newest])
    shown = _wait_version(client, tenant, p.generation_id, newest.version)
    seen = api.projector.stats.records
    gh.produce_records(api.kafka, [older, older])
    wait_for(lambda: api.projector.stats.records >= seen + 2, what="the older records projected")
    assert _get(client, tenant, p.generation_id).json() == shown


def test_a_base_generation_lists_and_pages(api: ApiStack, client: httpx.Client,
                                           other_tenant: Tenant) -> None:
    tenant = other_tenant  # a tenant of its own: its list holds only this test's generations
    done = gh.base_record(gh.plan(), tenant=tenant.name, done=True, version=3)
    refine = gh.base_record(gh.plan({"strategy": "REFINE", "base_image_url": "file:///a.png",
                                     "batch_size": 2}), tenant=tenant.name, at=gh.T0.replace(hour=13))
    gh.produce_records(api.kafka, [done, refine])
    gen = _wait_version(client, tenant, done.generation_id, 3)
    assert gen["status"] == "COMPLETED" and gen["prompt"] == "full-body shot of Anna"
    assert gen["settings"]["seed"] == 7 and gen["webhook_url"] == "https://hooks.example.com/g"
    assert [p["result"]["result_image_url"] for p in gen["predictions"]] == [
        f"file:///out/{t.task_id}.png" for t in done.plan.tasks]
    assert all(p["shot"] is None for p in gen["predictions"]) and gen["refine"] is None
    refined = _wait_version(client, tenant, refine.generation_id, 1)
    assert refined["refine"]["task_ids"] == list(refine.plan.refine.task_ids)
    assert refined["status"] == "RUNNING" and {p["status"] for p in refined["predictions"]} == {"PROCESSING"}

    listed = client.get("/api/v1/generations", headers=tenant.headers).json()
    assert [g["generation_id"] for g in listed["items"]] == [refine.generation_id, done.generation_id]
    assert listed["total"] == 2 and "predictions" not in listed["items"][0]
    page = client.get("/api/v1/generations", headers=tenant.headers,
                      params={"page_size": 1, "page": 2, "strategy": "GENERATE"}).json()
    assert page["total"] == 1 and page["items"] == []
    only = client.get("/api/v1/generations", headers=tenant.headers,
                      params={"status": "COMPLETED", "sort_order": "asc"}).json()
    assert [g["generation_id"] for g in only["items"]] == [done.generation_id]
    assert_problem(client.get("/api/v1/generations", headers=tenant.headers,
                              params={"colour": "red"}), 422)


# --------------------------------------------------------------------------- cancel


def _cancels(api: ApiStack, expect: int) -> list[GenerationCancelRequested]:
    out = []
    for msg in read_topic(api.kafka, api.kafka.topics.generations, expect=expect):
        if dict(msg.headers())["content-type"] == GENERATION_CANCEL_CONTENT_TYPE:
            cancel = GenerationCancelRequested.model_validate_json(msg.value())
            assert msg.key().decode() == cancel.generation_id
            out.append(cancel)
    return out


def test_cancel_produces_the_cancel_record(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                          other_tenant: Tenant) -> None:
    running = gh.base_record(gh.plan(), tenant=tenant.name)
    gh.produce_records(api.kafka, [running])
    gid = running.generation_id
    _wait_version(client, tenant, gid, running.version)
    path = f"/api/v1/generations/{gid}/cancel"
    before = record_count(api.kafka, api.kafka.topics.generations)

    # Another tenant's generation, an unknown one and no key: nothing is sent.
    assert_problem(client.post(path, headers=other_tenant.headers), 404)
    assert_problem(client.post(f"/api/v1/generations/{uuid.uuid4()}/cancel", headers=tenant.headers), 404)
    assert_problem(client.post("/api/v1/generations/not-a-uuid/cancel", headers=tenant.headers), 404)
    assert_problem(client.post(path), 401)
    assert_problem(client.post(path, json={"reason": "x", "colour": "red"}, headers=tenant.headers), 422)
    assert record_count(api.kafka, api.kafka.topics.generations) == before

    resp = client.post(path, json={"reason": "wrong product"}, headers=tenant.headers)
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["generation_id"] == gid and answer["status"] == "CANCEL_REQUESTED"
    assert answer["links"]["self"] == f"/api/v1/generations/{gid}"
    assert answer["links"]["tasks"] == [f"/api/v1/tasks/{t.task_id}" for t in running.plan.tasks]
    resp = client.post(path, headers=tenant.headers)  # no body: no reason
    assert resp.status_code == 202, resp.text
    assert record_count(api.kafka, api.kafka.topics.generations) == before + 2
    first, second = [c for c in _cancels(api, before + 2) if c.generation_id == gid]
    assert (first.reason, first.requested_by) == ("wrong product", f"api-key:{tenant.key_id}")
    assert second.reason is None and first.requested_at <= second.requested_at
    # Still RUNNING in the read model (no processors here): a generation is only read, not changed.
    assert _get(client, tenant, gid).json()["status"] == "RUNNING"


def test_cancel_of_a_finished_generation_is_a_conflict(api: ApiStack, client: httpx.Client,
                                                      tenant: Tenant) -> None:
    done = gh.base_record(gh.plan(), tenant=tenant.name, done=True, version=2)
    gh.produce_records(api.kafka, [done])
    _wait_version(client, tenant, done.generation_id, 2)
    before = record_count(api.kafka, api.kafka.topics.generations)
    problem = assert_problem(client.post(f"/api/v1/generations/{done.generation_id}/cancel",
                                         json={"reason": "too late"}, headers=tenant.headers), 409)
    assert problem["type"].endswith(":generation-finished") and "COMPLETED" in problem["detail"]
    assert record_count(api.kafka, api.kafka.topics.generations) == before


def test_get_with_wait_answers_when_the_generation_ends(api: ApiStack, client: httpx.Client,
                                                        tenant: Tenant) -> None:
    p = gh.plan()
    url = f"/api/v1/generations/{p.generation_id}"
    answered: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answered.append(
        client.get(url, headers=tenant.headers, params={"wait": 30}, timeout=60)))
    waiting.start()  # before the generation exists anywhere: waited for, not a 404
    wait_for(lambda: p.generation_id in api.app.state.notifier._waiters, what="the long poll to wait")
    gh.produce_records(api.kafka, [gh.base_record(p, tenant=tenant.name)])  # RUNNING: keeps waiting
    _wait_version(client, tenant, p.generation_id, 1)
    assert not answered
    gh.produce_records(api.kafka, [gh.base_record(p, tenant=tenant.name, done=True, version=2)])
    waiting.join(30)
    assert not waiting.is_alive() and answered[0].status_code == 200, answered
    assert answered[0].json()["status"] == "COMPLETED" and answered[0].json()["version"] == 2
    # Running: answered at the deadline with its state; unknown: 404 then; too long: 422.
    running = gh.plan()
    gh.produce_records(api.kafka, [gh.base_record(running, tenant=tenant.name)])
    _wait_version(client, tenant, running.generation_id, 1)
    early = client.get(f"/api/v1/generations/{running.generation_id}", headers=tenant.headers,
                       params={"wait": 0.3})
    assert early.status_code == 200 and early.json()["status"] == "RUNNING"
    assert_problem(client.get(f"/api/v1/generations/{uuid.uuid4()}", headers=tenant.headers,
                              params={"wait": 0.2}), 404)
    assert_problem(client.get(url, headers=tenant.headers, params={"wait": 3600}), 422)
