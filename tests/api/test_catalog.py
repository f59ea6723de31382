"""The catalog API: add, list, get; 404, 409, 422, 401. The catalog is global (every tenant
reads the same entries), so assertions look for this test's entries, not for exact lists."""

from __future__ import annotations

import uuid

import httpx
import pytest

from generations.catalog import CatalogKind
from projection.db.catalog import PostgresCatalog
from tests.api.conftest import ApiStack, Tenant
from tests.api.helpers import assert_problem

pytestmark = pytest.mark.integration


def test_add_list_and_get_each_kind(api: ApiStack, client: httpx.Client, tenant: Tenant,
                                    other_tenant: Tenant) -> None:
    for kind in ("subjects", "products", "styles"):
        name = f"{kind} {uuid.uuid4().hex[:6]}"
        resp = client.post(f"/api/v1/catalog/{kind}", headers=tenant.headers,
                           json={"name": name, "lora_ref": f"loras/{kind}", "default_weight": 0.65,
                                 "reference_urls": [f"s3://catalog/{kind}.png"]})
        assert resp.status_code == 201, resp.text
        entry = resp.json()
        assert entry["name"] == name and entry["kind"] == kind.removesuffix("s")
        assert entry["lora_ref"] == f"loras/{kind}" and entry["default_weight"] == 0.65
        assert entry["reference_urls"] == [f"s3://catalog/{kind}.png"]
        assert entry["created_at"] is not None
        assert resp.headers["location"] == entry["links"]["self"] == f"/api/v1/catalog/{kind}/{entry['id']}"
        # The same store the planner reads.
        stored = PostgresCatalog(api.db_url).get(CatalogKind(kind.removesuffix("s")), entry["id"])
        assert stored.name == name and stored.default_weight == 0.65
        assert stored.reference_urls == (f"s3://catalog/{kind}.png",)
        # Any tenant's key reads it.
        got = client.get(entry["links"]["self"], headers=other_tenant.headers)
        assert got.status_code == 200 and got.json() == entry
        listed = client.get(f"/api/v1/catalog/{kind}", headers=tenant.headers).json()
        assert entry in listed["items"] and listed["total"] == len(listed["items"])
        assert all(e["kind"] == kind.removesuffix("s") for e in listed["items"])


def test_an_entry_without_a_lora_and_a_chosen_id(client: httpx.Client, tenant: Tenant) -> None:
    chosen = str(uuid.uuid4())
    resp = client.post("/api/v1/catalog/styles", headers=tenant.headers,
                       json={"id": chosen.upper(), "name": "Studio Minimal"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["id"] == chosen and resp.json()["lora_ref"] is None
    assert resp.json()["reference_urls"] == []
    again = client.post("/api/v1/catalog/styles", headers=tenant.headers,
                        json={"id": chosen, "name": "Another"})
    assert assert_problem(again, 409)["type"].endswith(":catalog-entry-exists")


def test_missing_entries_are_404(client: httpx.Client, tenant: Tenant) -> None:
    missing = str(uuid.uuid4())
    body = assert_problem(client.get(f"/api/v1/catalog/products/{missing}", headers=tenant.headers), 404)
    assert body["type"].endswith(":catalog-entry-not-found") and missing in body["detail"]
    assert_problem(client.get("/api/v1/catalog/products/not-a-uuid", headers=tenant.headers), 404)
    # A subject's id is no product.
    subject = client.post("/api/v1/catalog/subjects", headers=tenant.headers,
                          json={"name": "Ben", "lora_ref": "loras/ben", "default_weight": 0.5}).json()
    assert_problem(client.get(f"/api/v1/catalog/products/{subject['id']}", headers=tenant.headers), 404)


@pytest.mark.parametrize(("body", "where"), [
    ({"name": "x", "lora_ref": "l", "default_weight": 1.5}, ["body", "default_weight"]),
    ({"name": "x", "lora_ref": "l", "default_weight": -0.1}, ["body", "default_weight"]),
    ({"name": "   ", "lora_ref": "l"}, ["body", "name"]),
    ({"lora_ref": "l"}, ["body", "name"]),
    ({"name": "x", "lora_ref": ""}, ["body", "lora_ref"]),
    ({"name": "x\u0000y", "lora_ref": "l"}, ["body", "name"]),
    ({"name": "x", "lora_ref": "a\nb"}, ["body", "lora_ref"]),
    ({"name": "x", "weight": 0.5}, ["body", "weight"]),
    ({"name": "x", "id": "not-a-uuid"}, ["body", "id"]),
    ({"name": "x", "reference_urls": ["ftp://x.example/a.png"]}, ["body", "reference_urls", 0]),
    ({"name": "x", "reference_urls": [f"s3://c/{i}.png" for i in range(9)]}, ["body", "reference_urls"]),
])
def test_bad_entries_are_422(client: httpx.Client, tenant: Tenant, body: dict, where: list) -> None:
    before = client.get("/api/v1/catalog/subjects", headers=tenant.headers).json()["total"]
    problem = assert_problem(client.post("/api/v1/catalog/subjects", headers=tenant.headers, json=body), 422)
    assert problem["type"].endswith(":validation-error")
    assert where in [e["loc"] for e in problem["errors"]], problem
    assert client.get("/api/v1/catalog/subjects", headers=tenant.headers).json()["total"] == before


def test_unknown_kinds_and_missing_keys(client: httpx.Client, tenant: Tenant) -> None:
    problem = assert_problem(client.get("/api/v1/catalog/poses", headers=tenant.headers), 422)
    assert problem["errors"][0]["loc"] == ["path", "kind"]
    assert_problem(client.post("/api/v1/catalog/poses", headers=tenant.headers, json={"name": "x"}), 422)
    assert_problem(client.get("/api/v1/catalog/subjects"), 401)
    assert_problem(client.post("/api/v1/catalog/subjects", json={"name": "x"}), 401)
    assert_problem(client.get(f"/api/v1/catalog/subjects/{uuid.uuid4()}"), 401)
