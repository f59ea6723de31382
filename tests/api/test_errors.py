"""Bad input of every kind: a 4xx problem document, and nothing changed anywhere."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from projection.batch import projector_topics
from projection.db.apikeys import revoke_key
from tests.api.conftest import ApiStack, Tenant, new_tenant
from tests.api.helpers import assert_problem, projector_caught_up, record_counts
from tests.kafka_helpers import wait_for

pytestmark = pytest.mark.integration

URL = "/api/v1/tasks"
GOOD = {"task_type": "GENERATION", "prompt": "a linen shirt"}


def _footprint(api: ApiStack) -> tuple[dict[str, int], int]:
    """Records on every task, status and control topic, and task rows, once the projector has
    written every record there is (a task of an earlier test projected late is not ours)."""
    topics = [*api.kafka.topics.task_topics(), api.kafka.topics.status, api.kafka.topics.control]
    wait_for(lambda: projector_caught_up(api.kafka, api.projector.group_id,
                                         projector_topics(api.kafka)),
             what="the projector to catch up")
    with psycopg.connect(api.db_url) as conn:
        rows = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    return record_counts(api.kafka, topics), rows


@pytest.fixture
def unchanged(api: ApiStack) -> Iterator[None]:
    before = _footprint(api)
    yield
    assert _footprint(api) == before, "a refused request changed something"


BAD_BODIES = {
    "wrong type": {**GOOD, "width": "wide"},
    "out of range": {**GOOD, "width": 10},
    "out of range float": {**GOOD, "subject_lora_weight": 1.5},
    "pixel budget": {**GOOD, "width": 4096, "height": 4096 + 64},
    "unknown field": {**GOOD, "colour": "red"},
    "missing field": {"task_type": "GENERATION"},
    "blank prompt": {**GOOD, "prompt": "   "},
    "unknown task type": {"task_type": "TELEPORT", "prompt": "x"},
    "no task type": {"prompt": "x"},
    "bad url scheme": {"task_type": "BACKGROUND_REMOVE", "image_url": "ftp://x/y.png"},
    "bad webhook": {**GOOD, "webhook_url": "file:///etc/passwd"},
    "not an object": [GOOD],
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_invalid_bodies_get_422(client: httpx.Client, tenant: Tenant, case: str,
                                unchanged: None) -> None:
    body = assert_problem(client.post(URL, json=BAD_BODIES[case], headers=tenant.headers), 422)
    assert body["title"] == "Unprocessable Content" or body["title"]
    assert body["instance"] == URL


def test_validation_problems_name_the_field(client: httpx.Client, tenant: Tenant,
                                            unchanged: None) -> None:
    body = assert_problem(client.post(URL, json=BAD_BODIES["out of range"], headers=tenant.headers), 422)
    assert any(e["loc"][-1] == "width" for e in body["errors"])
    assert "width" in body["detail"]


def test_malformed_json_gets_400(client: httpx.Client, tenant: Tenant, unchanged: None) -> None:
    resp = client.post(URL, content=b'{"task_type": "GENERATION", "prompt": ',
                       headers={**tenant.headers, "Content-Type": "application/json"})
    assert assert_problem(resp, 400)["type"].endswith(":malformed-json")


def test_oversize_bodies_get_413(client: httpx.Client, tenant: Tenant, unchanged: None) -> None:
    big = json.dumps({**GOOD, "prompt": "x" * (1_048_576 + 10)}).encode()
    resp = client.post(URL, content=big, headers={**tenant.headers, "Content-Type": "application/json"})
    assert_problem(resp, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    resp = client.post(URL, content=chunks(), headers={**tenant.headers, "Content-Type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_problem(resp, 413)


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz",
                                  "Bearer csk_000000000000_wrong"])
def test_missing_or_wrong_key_gets_401(client: httpx.Client, auth: str | None,
                                       unchanged: None) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    for method, path in (("POST", URL), ("GET", URL), ("GET", f"{URL}/{uuid.uuid4()}"),
                         ("GET", f"{URL}/{uuid.uuid4()}/events"),
                         ("POST", f"{URL}/{uuid.uuid4()}/cancel")):
        resp = client.request(method, path, headers=headers,
                              json=GOOD if method == "POST" else None)
        assert_problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_a_revoked_key_gets_401(api: ApiStack, client: httpx.Client, unchanged: None) -> None:
    tenant = new_tenant(api)
    assert client.get(URL, headers=tenant.headers).status_code == 200  # accepted, so cached
    assert revoke_key(api.db_url, tenant.key_id)
    # The cached key is dropped when the revocation's NOTIFY arrives (milliseconds), long before
    # the cache's TTL (10 s by default) would have let it go.
    wait_for(lambda: client.get(URL, headers=tenant.headers).status_code == 401,
             "the revoked key to be refused", timeout_s=5)
    assert_problem(client.get(URL, headers=tenant.headers), 401)
    assert_problem(client.post(URL, json=GOOD, headers=tenant.headers), 401)


def test_an_accepted_key_is_not_checked_against_the_database_again(
        api: ApiStack, client: httpx.Client) -> None:
    tenant = new_tenant(api)
    assert client.get(URL, headers=tenant.headers).status_code == 200
    # Revoked behind the API's back (no NOTIFY): the cache answers until its TTL.
    with psycopg.connect(api.db_url, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked = true WHERE key_id = %s", (tenant.key_id,))
    assert client.get(URL, headers=tenant.headers).status_code == 200
    api.app.state.key_cache.forget(tenant.key_id)
    assert_problem(client.get(URL, headers=tenant.headers), 401)


def test_a_wrong_secret_for_a_real_key_id_gets_401(client: httpx.Client, tenant: Tenant,
                                                   unchanged: None) -> None:
    forged = f"csk_{tenant.key_id}_{'A' * 43}"
    assert_problem(client.get(URL, headers={"Authorization": f"Bearer {forged}"}), 401)


@pytest.mark.parametrize("params", [
    {"page_size": 201}, {"page_size": 0}, {"page": 0}, {"page": "two"}, {"sort_by": "params"},
    {"sort_order": "sideways"}, {"status": "DONE"}, {"task_type": "teleport"},
    {"created_after": "yesterday"}, {"created_after": "2025-01-01T00:00:00"},  # naive
    {"search": "zz%"}, {"colour": "red"}, {"origin_zone": "eu\u0000"}, {"provider_type": "a\tb"},
])
def test_bad_list_queries_get_422(client: httpx.Client, tenant: Tenant, params: dict) -> None:
    assert_problem(client.get(URL, params=params, headers=tenant.headers), 422)


def test_unknown_ids_and_routes_get_404(client: httpx.Client, tenant: Tenant,
                                        unchanged: None) -> None:
    for path in (f"{URL}/{uuid.uuid4()}", f"{URL}/not-a-uuid", f"{URL}/{uuid.uuid4()}/result",
                 f"{URL}/{uuid.uuid4()}/events", "/api/v1/nothing-here"):
        assert_problem(client.get(path, headers=tenant.headers), 404)
    assert_problem(client.post(f"{URL}/{uuid.uuid4()}/cancel", headers=tenant.headers), 404)
    assert_problem(client.delete(URL, headers=tenant.headers), 405)


def test_bad_idempotency_key_gets_422(client: httpx.Client, tenant: Tenant, unchanged: None) -> None:
    resp = client.post(URL, json=GOOD, headers={**tenant.headers, "Idempotency-Key": "k" * 256})
    assert_problem(resp, 422)
