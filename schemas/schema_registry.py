"""A minimal client of the Confluent Schema Registry REST API (also served by Karapace,
Apicurio's ccompat API and Redpanda), used when ``SCHEMA_REGISTRY_URL`` is set.

Subjects follow the RecordNameStrategy (the record's full name), because one record type may
travel on several topics (a task topic and its DLQ).
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx

from schemas.errors import ComputeError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_TIMEOUT_S = 10.0


class SchemaRegistryError(ComputeError):
    """The schema registry refused or did not answer. Check SCHEMA_REGISTRY_URL and that the
    subject's compatibility level allows this change (see docs/SCHEMA_EVOLUTION.md)."""


class HttpSchemaRegistry:
    def __init__(self, url: str, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(base_url=url.rstrip("/"), timeout=_TIMEOUT_S)

    def register(self, subject: str, schema_text: str) -> int:
        body = self._call("POST", f"/subjects/{subject}/versions",
                          json={"schemaType": "AVRO", "schema": schema_text})
        return int(body["id"])

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        body = self._call("GET", f"/schemas/ids/{schema_id}")
        return cast(dict[str, Any], json.loads(body["schema"]))

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(
                method, path, headers={"Content-Type": _CONTENT_TYPE}, **kwargs
            )
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"schema registry {method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise SchemaRegistryError(
                f"schema registry {method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return cast(dict[str, Any], response.json())
