"""The OpenAPI document is the contract: schemathesis, with every check it has, over every
operation of the real API (uvicorn on a loopback port, real PostgreSQL and Kafka: the ``api``
fixture), finds nothing.

Each operation gets schemathesis' examples, coverage and fuzzing phases: values at and beyond
every documented bound, missing and malformed parameters, unexpected methods, and random valid
bodies. ``call_and_validate`` runs every check enabled by the configuration below (all of them,
as ``schemathesis run --checks all`` does), so a rule the API applies but the document does not
state (or the reverse) fails here. Examples are few per operation and derandomized, so a run is
the same every time and stays short; ``schemathesis run`` by hand goes further (docs/API.md,
"The OpenAPI document is the contract").
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from api import create_app, load_settings
from api.problems import PROBLEM_MEDIA_TYPE
from projection.db.apikeys import create_key
from schemas.kafka_settings import KafkaSettings
from tests.api.conftest import ApiStack, new_tenant
from tests.api.contract_hooks import CATALOG_FIELDS, make_steps_runnable, name_real_catalog_entries

pytestmark = pytest.mark.integration

# Per operation and phase: enough to reach each documented bound and a few random bodies, few
# enough that the whole module stays around a minute on a small machine.
MAX_EXAMPLES = 12
SEED = 20261206
# Stateful scenarios (each a few linked calls): enough to follow each link a few times.
STATEFUL_SCENARIOS = 15
# The ``api`` fixture's API (tests/api/conftest.py) with a short long-poll limit: the
# fuzzer tries ``wait`` up to the documented maximum, and each try of an unknown id waits it out.
API_SETTINGS = {"max_wait_s": 2.0}


def _document() -> dict[str, Any]:
    # Collection needs the operations before any fixture runs (schemathesis' lazy loader does
    # not work with this pytest), so the document comes from an app built with the settings the
    # document depends on; ``contract`` checks the served document is this one. Building the
    # app opens nothing: its lifespan (never run here) does.
    settings = load_settings(database_url="postgresql://unused/compute",
                             kafka=KafkaSettings(bootstrap_servers="unused:9092"), **API_SETTINGS)
    return create_app(settings).openapi()


schema = schemathesis.openapi.from_dict(_document(), config=SchemathesisConfig.from_dict({
    "seed": SEED,
    "request-timeout": 30,  # beyond the longest answer: a long poll of max_wait_s
    "checks": {"enabled": True},  # every check: `schemathesis run --checks all`
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
               "fuzzing": {"enabled": True}},
    # No U+0000 in strings: the API refuses NUL in every string of a body with 422 (PostgreSQL
    # cannot store it; api/routing.py), a rule the document states in its description
    # because JSON Schema has no way to say it of every string (docs/API.md).
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   "allow-x00": False},
}))


@dataclass
class Contract:
    base_url: str
    tenant: dict[str, str]
    operator: dict[str, str]
    catalog: dict[str, str]  # body field -> the id of a real entry of its kind


@pytest.fixture(scope="module")
def contract(api: ApiStack) -> Contract:
    """The served API and two keys: a tenant's, and an operator's for the fleet-wide routes."""
    tenant = new_tenant(api)
    operator_key, _ = create_key(api.db_url, f"operators-{tenant.name}", operator=True)
    operator = {"Authorization": f"Bearer {operator_key}"}
    served = httpx.get(f"{api.base_url}/api/v1/openapi.json", headers=tenant.headers, timeout=30)
    assert served.status_code == 200, served.text
    assert served.json() == schema.raw_schema, "the fuzzed document is not the one served"
    catalog = {}
    for field, kind in CATALOG_FIELDS.items():
        entry = httpx.post(f"{api.base_url}/api/v1/catalog/{kind}", headers=tenant.headers,
                           json={"name": f"contract {kind}"}, timeout=30)
        assert entry.status_code == 201, entry.text
        catalog[field] = entry.json()["id"]
    return Contract(api.base_url, tenant.headers, operator, catalog)


def _is_operator_route(case: Any) -> bool:
    # The routes that span every tenant document 403 (a tenant key is refused): they are
    # fuzzed with an operator key, every other route with a tenant's key.
    return "403" in case.operation.definition.raw.get("responses", {})


@schema.parametrize()
def test_every_operation_keeps_its_contract(case: Any, contract: Contract) -> None:
    headers = contract.operator if _is_operator_route(case) else contract.tenant
    name_real_catalog_entries(case, contract.catalog)
    make_steps_runnable(case)
    case.call_and_validate(base_url=contract.base_url, headers=headers)


def test_a_method_a_path_does_not_serve_is_405_naming_the_ones_it_does(contract: Contract) -> None:
    # schemathesis' Allow check passes a 405 without (or with an empty) Allow; RFC 9110 requires it.
    for template, operations in schema.raw_schema["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: "subjects" if m[1] == "kind" else str(uuid.uuid4()), template)
        documented = {method.upper() for method in operations}
        for method in {"DELETE", "PATCH", "PUT", "GET", "POST"} - documented:
            resp = httpx.request(method, contract.base_url + path, headers=contract.tenant, timeout=30)
            assert resp.status_code == 405, (method, template, resp.status_code, resp.text)
            assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
            assert set(resp.headers["allow"].split(", ")) == documented, (method, template, resp.headers)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/tasks", {"task_type": "LLM_INTERACTION", "prompt": "hi", "provider_config": '{"a": 1}'}),
    ("/api/v1/catalog/styles", {"name": "braced", "id": "{123e4567-e89b-12d3-a456-426614174000}"}),
    ("/api/v1/catalog/styles", {"name": "unhyphenated", "id": "123e4567e89b12d3a456426614174000"}),
], ids=["provider_config as JSON text", "braced UUID", "unhyphenated UUID"])
def test_inputs_the_document_forbids_and_the_fuzzer_rarely_draws_are_refused(
        contract: Contract, path: str, body: dict[str, Any]) -> None:
    # Each was accepted once (the models also read Avro records, which carry such spellings).
    resp = httpx.post(contract.base_url + path, json=body, headers=contract.tenant, timeout=30)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE


def test_sequences_of_calls_keep_the_contract(contract: Contract) -> None:
    """Stateful: chains of calls along the links schemathesis infers from the document (a
    generation started, then read and cancelled...), with the checks that need a history (use
    after free, resource availability, object-level authorization)."""

    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            name_real_catalog_entries(case, contract.catalog)
            make_steps_runnable(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            headers = contract.operator if _is_operator_route(case) else contract.tenant
            return {"base_url": contract.base_url, "headers": headers}

    Sequences.run(settings=hypothesis.settings(max_examples=STATEFUL_SCENARIOS, stateful_step_count=6,
                                               deadline=None, derandomize=True, database=None,
                                               suppress_health_check=list(hypothesis.HealthCheck)))
