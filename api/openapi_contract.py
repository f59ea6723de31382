"""The OpenAPI document states what the API answers, not only what its routes declare.

FastAPI documents each route's parameters, body and declared responses. What the app around the
routes adds is stated here, once, for every operation (``install_openapi``):

* every 4xx and 5xx is ``application/problem+json`` with the ``Problem`` schema (FastAPI would
  document its own 422 shape and ``application/json``, neither of which the API sends);
* the statuses every route of a kind can answer: 401 where a key is needed, 400 (malformed
  JSON), 413 (a body over ``max_body_bytes``) and 422 where there is a body, 422 where there are
  parameters;
* parameters as they travel: absent or a value, never ``null``;
* the deployment's limits: ``wait`` at most ``max_wait_s`` seconds;
* integer bounds as they are: FastAPI's document model holds bounds as floats, which turns
  2^63 - 1 (a seed's maximum) into 2^63, so a client (or a fuzzer) reading the document would
  send a seed the API refuses.

tests/api/test_openapi_contract.py fuzzes the served document against the API
(docs/API.md, "The OpenAPI document is the contract").
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from api.problems import PROBLEM_MEDIA_TYPE, Problem
from api.settings import ApiSettings
from schemas.records import AVRO_LONG_MAX

_REF = "#/components/schemas/{model}"
_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}}
# FastAPI's own 422 models; the API answers 422 with a Problem instead.
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# The integer bounds of the models beyond a double's 53 bits, by the float FastAPI makes of them.
_EXACT = {float(n): n for n in (AVRO_LONG_MAX, -AVRO_LONG_MAX - 1)}
# What no field's schema can say, said once for the whole document.
_DESCRIPTION = (
    "Every error is application/problem+json (RFC 9457). Rules of every request that JSON Schema "
    "cannot state per field: no string may contain U+0000 (NUL) or a lone surrogate, no number "
    "may be NaN or Infinity (422); the catalog ids a generation names must exist (422 unknown-catalog-entry); "
    "a workflow's steps must form a DAG that can run: unique ids, real dependencies without a cycle, mappings "
    "from an ancestor's result field, each step's parameters valid once mapped (422 workflow-invalid); a task or "
    "generation record the broker would refuse as too large is 413 task-too-large. "
    "See docs/API.md, \"The OpenAPI document is the contract\".")


def install_openapi(app: FastAPI, settings: ApiSettings) -> None:
    """Make ``app.openapi()`` (and so ``/api/v1/openapi.json``) the completed document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate(), max_wait_s=settings.max_wait_s)  # generate() caches it
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any], *, max_wait_s: float) -> dict[str, Any]:
    """Add to FastAPI's document what the app answers beyond its routes' declarations."""
    doc["info"]["description"] = _DESCRIPTION
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_422:
        schemas.pop(name, None)
    for name, schema in Problem.model_json_schema(ref_template=_REF).pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas.setdefault("Problem", Problem.model_json_schema(ref_template=_REF))
    for operation in (op for ops in doc["paths"].values() for op in ops.values()):
        responses = operation["responses"]
        for status in _implied_statuses(operation):
            responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
        for status, response in responses.items():
            if status.isdigit() and int(status) >= 400:
                response["content"] = dict(_PROBLEM_CONTENT)
        for parameter in operation.get("parameters", []):
            parameter["schema"] = _not_null(parameter["schema"])
            if parameter["in"] == "query" and parameter["name"] == "wait":
                # The route refuses a longer wait (422); the limit is the deployment's setting.
                parameter["schema"]["maximum"] = max_wait_s
    _exact_bounds(doc)
    return doc


def _exact_bounds(node: Any) -> None:
    if isinstance(node, dict):
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, float) and value in _EXACT:
                node[key] = _EXACT[value]
        for child in node.values():
            _exact_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_bounds(child)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent or a value: HTTP has no null (a client sending the text
    "null" sends a string). FastAPI documents ``X | None`` parameters as ``anyOf [X, null]``."""
    options = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" not in schema or len(options) != 1:
        return schema
    return {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}


def _implied_statuses(operation: dict[str, Any]) -> set[int]:
    statuses: set[int] = set()
    if operation.get("security"):
        statuses.add(401)  # no key, or an unknown or revoked one (api/deps.py)
    if "requestBody" in operation:
        statuses |= {400, 413, 422}  # malformed JSON, BodySizeLimit, validation
    if operation.get("parameters"):
        statuses.add(422)  # a parameter of the wrong type or out of range
    return statuses
