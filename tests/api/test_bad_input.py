"""Input the broker, the Avro writer or PostgreSQL cannot take: a typed 4xx, nothing stored; and
what the API shows without the right key. Against the real API, broker and database (issue 14)."""

from __future__ import annotations

import json
import random
import string
import uuid

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from schemas.codec import EventCodec
from schemas.enums import TaskType
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import assert_problem, get_task, now, submit, wait_status
from tests.api.test_errors import unchanged  # noqa: F401 (fixture)
from tests.projection.db.helpers import submitted, task_row, wait_for

pytestmark = pytest.mark.integration

URL = "/api/v1/tasks"
LLM = {"task_type": "LLM_INTERACTION", "prompt": "hello"}


def _raw(client: httpx.Client, tenant: Tenant | None, text: str | bytes,
         key: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(tenant.headers if tenant else {})}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(URL, content=text, headers=headers)


def _noise(n: int) -> str:
    """Text lz4 cannot shrink much, so the broker sees (nearly) its whole size."""
    rng = random.Random(n)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def _repeat_is_a_new_task(client: httpx.Client, tenant: Tenant, key: str) -> None:
    """Nothing of the refused request was kept: its key names no task and still works."""
    assert_problem(get_task(client, tenant, _task_id(tenant, key)), 404)
    again = submit(client, tenant, LLM, key=key)
    assert again.status_code == 202 and again.json()["idempotent_replay"] is False, again.text


def _task_id(tenant: Tenant, key: str) -> str:
    from producers.submit import task_id_for

    return task_id_for(key, tenant.name)


# ------------------------------------------------------------------ too large for the broker


def test_a_body_under_the_api_limit_over_the_producers_record_limit_gets_413(
        client: httpx.Client, tenant: Tenant, unchanged: None) -> None:  # noqa: F811
    body = json.dumps({**LLM, "prompt": _noise(1_010_000)})  # under 1 MiB, over 1,000,000
    assert len(body) < 1_048_576
    problem = assert_problem(_raw(client, tenant, body, key="big-1"), 413)
    assert problem["type"].endswith(":task-too-large") and "by URL" in problem["detail"]


def test_a_task_the_topic_refuses_as_too_large_gets_413(api: ApiStack, client: httpx.Client,
                                                        tenant: Tenant) -> None:
    topic = api.kafka.topics.task(TaskType.LLM_INTERACTION)
    admin = AdminClient(api.kafka.client_config())

    def limit(value: str | None) -> None:
        op = AlterConfigOpType.DELETE if value is None else AlterConfigOpType.SET
        entry = ConfigEntry("max.message.bytes", value or "", incremental_operation=op)
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)

    limit("4096")
    try:
        body = json.dumps({**LLM, "prompt": _noise(40_000)})
        # The broker applies a new topic limit within moments; until then a submit may pass.
        def refused() -> dict | None:
            resp = _raw(client, tenant, body, key=f"big-{uuid.uuid4()}")
            return assert_problem(resp, 413) if resp.status_code != 202 else None

        problem = wait_for(refused, what="the broker to refuse the large task")
        assert problem["type"].endswith(":task-too-large")
        key = f"topic-big-{uuid.uuid4()}"
        assert_problem(_raw(client, tenant, body, key=key), 413)
    finally:
        limit(None)
    _repeat_is_a_new_task(client, tenant, key)


# ------------------------------------------------------------------ text and numbers JSON cannot carry

# Each raw body (the escapes are JSON's, as a client sends them) and the field the 422 names.
UNCARRIABLE = {
    "lone surrogate in provider_config": (
        '{"task_type": "LLM_INTERACTION", "prompt": "hi", "provider_config": {"k": "\\udfff"}}',
        ["body", "provider_config", "k"]),
    "lone surrogate in the prompt": (
        '{"task_type": "LLM_INTERACTION", "prompt": "a \\ud800 b"}', ["body", "prompt"]),
    "lone surrogate in a webhook": (
        '{"task_type": "LLM_INTERACTION", "prompt": "hi", "webhook_url": "https://h/\\udfff"}',
        ["body", "webhook_url"]),
    "NaN": ('{"task_type": "LLM_INTERACTION", "prompt": "hi", "provider_config": {"t": NaN}}',
            ["body", "provider_config", "t"]),
    "Infinity": ('{"task_type": "LLM_INTERACTION", "prompt": "hi", "provider_config": {"t": [1, -Infinity]}}',
                 ["body", "provider_config", "t", 1]),
    "1e400": ('{"task_type": "LLM_INTERACTION", "prompt": "hi", "provider_config": {"t": 1e400}}',
              ["body", "provider_config", "t"]),
    "NUL in a file path": ('{"task_type": "IMAGE_ADJUSTER", "base_image_url": "file:///in/a\\u0000.png"}',
                           ["body", "base_image_url"]),
}


@pytest.mark.parametrize("case", list(UNCARRIABLE))
def test_values_json_or_the_store_cannot_carry_get_422_naming_the_field(
        client: httpx.Client, tenant: Tenant, case: str, unchanged: None) -> None:  # noqa: F811
    body, loc = UNCARRIABLE[case]
    problem = assert_problem(_raw(client, tenant, body, key=f"bad-{case}"), 422)
    assert [e["loc"] for e in problem["errors"]] == [loc], problem
    assert ".".join(map(str, loc[1:])) in problem["detail"]


def test_a_valid_surrogate_pair_and_large_finite_numbers_are_accepted(
        client: httpx.Client, tenant: Tenant) -> None:
    body = ('{"task_type": "LLM_INTERACTION", "prompt": "smile \\ud83d\\ude00",'
            ' "provider_config": {"big": 1e300, "n": -0.0}}')
    resp = _raw(client, tenant, body)
    assert resp.status_code == 202, resp.text
    task = wait_status(client, tenant, resp.json()["task_id"], "QUEUED")
    assert task["params"]["prompt"] == "smile \U0001f600"
    config = task["params"]["provider_config"]  # jsonb keeps numbers as numeric: compare values
    assert float(config["big"]) == 1e300 and float(config["n"]) == 0.0


def test_a_body_that_is_not_utf8_is_malformed(client: httpx.Client, tenant: Tenant,
                                              unchanged: None) -> None:  # noqa: F811
    # A surrogate written as raw (CESU-8) bytes: Python's json would turn it into text.
    body = b'{"task_type": "LLM_INTERACTION", "prompt": "\xed\xbf\xbf"}'
    problem = assert_problem(_raw(client, tenant, body), 400)
    assert problem["type"].endswith(":malformed-json")


# ------------------------------------------------------------------ strict JSON types

COERCIBLE = {
    "a number as text": ({"task_type": "LLM_INTERACTION", "prompt": "hi", "temperature": "0.5"},
                         ["body", "LLM_INTERACTION", "temperature"]),
    "a boolean as a number": ({"task_type": "LLM_INTERACTION", "prompt": "hi", "max_tokens": True},
                              ["body", "LLM_INTERACTION", "max_tokens"]),
    "an integer as text": ({"task_type": "GENERATION", "prompt": "hi", "width": "512"},
                           ["body", "GENERATION", "width"]),
    "a number as a boolean": ({"task_type": "FACE_ENHANCER", "base_image_url": "s3://b/k.png",
                               "preserve_identity": 1}, ["body", "FACE_ENHANCER", "preserve_identity"]),
}


@pytest.mark.parametrize("case", list(COERCIBLE))
def test_json_types_are_not_coerced(client: httpx.Client, tenant: Tenant, case: str,
                                    unchanged: None) -> None:  # noqa: F811
    body, loc = COERCIBLE[case]
    problem = assert_problem(submit(client, tenant, body), 422)
    assert loc in [e["loc"] for e in problem["errors"]], problem


def test_a_json_integer_fills_a_number_field(client: httpx.Client, tenant: Tenant) -> None:
    resp = submit(client, tenant, {**LLM, "temperature": 1})
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("value", ["0.5", "1700000000", "yesterday"])
def test_a_list_date_must_be_iso_text(client: httpx.Client, tenant: Tenant, value: str) -> None:
    for path in ("/api/v1/tasks", "/api/v1/generations"):
        resp = client.get(path, params={"created_before": value}, headers=tenant.headers)
        problem = assert_problem(resp, 422)
        assert ["query", "created_before"] in [e["loc"] for e in problem["errors"]]
    ok = client.get(URL, params={"created_before": "2030-01-01T00:00:00Z"}, headers=tenant.headers)
    assert ok.status_code == 200, ok.text


# ------------------------------------------------------------------ authentication comes first


@pytest.mark.parametrize("body", ["{not json", '{"task_type": "LLM_INTERACTION", "prompt": NaN}',
                                  '{"task_type": "X"}'])
def test_without_a_key_any_body_gets_401(client: httpx.Client, body: str,
                                         unchanged: None) -> None:  # noqa: F811
    problem = assert_problem(_raw(client, None, body), 401)
    assert problem["type"].endswith(":unauthorized")
    bad_key = _raw(client, Tenant("nobody", "csk_000000000000_nope", "x"), body)
    assert_problem(bad_key, 401)
    generation = client.post("/api/v1/generations", content=body,
                             headers={"Content-Type": "application/json"})
    assert_problem(generation, 401)


def test_with_a_key_malformed_json_gets_400(client: httpx.Client, tenant: Tenant,
                                            unchanged: None) -> None:  # noqa: F811
    assert assert_problem(_raw(client, tenant, "{not json"), 400)["type"].endswith(":malformed-json")


# ------------------------------------------------------------------ what needs an operator key

FLEET_ROUTES = ["/metrics", "/api/v1/monitoring/workers", "/api/v1/monitoring/queues"]


@pytest.mark.parametrize("path", FLEET_ROUTES)
def test_fleet_wide_routes_need_an_operator_key(client: httpx.Client, tenant: Tenant,
                                                operator: Tenant, path: str) -> None:
    assert_problem(client.get(path), 401)
    problem = assert_problem(client.get(path, headers=tenant.headers), 403)
    assert problem["type"].endswith(":operator-only") and "--operator" in problem["detail"]
    resp = client.get(path, headers=operator.headers)
    assert resp.status_code == 200, resp.text


def test_metrics_for_an_operator_count_every_tenant(client: httpx.Client, tenant: Tenant,
                                                   other_tenant: Tenant, operator: Tenant) -> None:
    for who in (tenant, other_tenant):
        wait_status(client, who, submit(client, who, LLM).json()["task_id"], "QUEUED")
    text = client.get("/metrics", headers=operator.headers).text
    assert 'compute_tasks{status="QUEUED",task_type="LLM_INTERACTION"}' in text


def test_a_tenant_still_reads_its_own_stats(client: httpx.Client, tenant: Tenant) -> None:
    wait_status(client, tenant, submit(client, tenant, LLM).json()["task_id"], "QUEUED")
    stats = client.get("/api/v1/monitoring/stats", headers=tenant.headers)
    assert stats.status_code == 200 and stats.json()["total"] == 1, stats.text


def test_the_openapi_document_and_docs_are_public_by_design(client: httpx.Client) -> None:
    # docs/SECURITY.md: the contract is public (it names no tenant, key or host); every
    # operation in it still needs a key.
    doc = client.get("/api/v1/openapi.json")
    assert doc.status_code == 200
    assert client.get("/api/v1/docs").status_code == 200
    keyed = [op for p, ops in doc.json()["paths"].items() if p.startswith("/api/v1/")
             for op in ops.values()]
    assert keyed and all(op.get("security") for op in keyed)


# ------------------------------------------------------------------ a foreign producer's record


def test_a_foreign_record_with_nan_in_provider_config_keeps_its_task_and_webhook(
        api: ApiStack, tenant: Tenant) -> None:
    """Another producer writes provider_config as JSON text with NaN (ours cannot): the read
    model still has the task, its webhook and its params, the NaN as null."""
    tid = str(uuid.uuid4())
    event = submitted(tid, at=now(), task_type=TaskType.LLM_INTERACTION, tenant=tenant.name,
                      params={"prompt": "hi", "provider_config": {"t": 1.5, "keep": "x"}},
                      webhook_url="https://hooks.example.com/t")
    value = EventCodec().encode(event)
    assert value.count(b'"t":1.5') == 1
    producer = Producer(api.kafka.producer_config())
    # Same length, so the Avro string's length prefix stays right.
    producer.produce(api.kafka.topics.task(TaskType.LLM_INTERACTION),
                     value.replace(b'"t":1.5', b'"t":NaN'), tid)
    assert producer.flush(30) == 0
    row = wait_for(lambda: (task_row(api.db_url, tid) or {}).get("params") and task_row(api.db_url, tid),
                   what="the foreign task projected")
    assert row["params"]["provider_config"] == {"t": None, "keep": "x"}
    assert row["webhook_url"] == "https://hooks.example.com/t"
