"""Confluent schema-registry framing: the codec with a registry, and the registry's REST client.

No schema registry server can be installed on this machine (neither Confluent's nor Karapace is
on PyPI or Maven Central), so the registry is the codec's collaborator here: an in-memory one for
the framing, and httpx's MockTransport for the REST client's requests.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.errors import UnknownSchemaError
from schemas.events import Envelope, StatusChanged
from schemas.framing import Framing, read_header
from schemas.schema_registry import HttpSchemaRegistry, SchemaRegistryError


class InMemoryRegistry:
    def __init__(self) -> None:
        self.subjects: dict[str, int] = {}
        self.schemas: dict[int, str] = {}

    def register(self, subject: str, schema_text: str) -> int:
        for schema_id, text in self.schemas.items():
            if text == schema_text:
                self.subjects[subject] = schema_id
                return schema_id
        schema_id = len(self.schemas) + 100
        self.schemas[schema_id] = schema_text
        self.subjects[subject] = schema_id
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict:
        return json.loads(self.schemas[schema_id])


def _event() -> StatusChanged:
    env = Envelope(event_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), task_type=TaskType.EDITING,
                   occurred_at=datetime(2026, 11, 23, tzinfo=UTC), source="test")
    return StatusChanged(envelope=env, status=TaskStatus.QUEUED)


def test_registry_framing_round_trips_and_readers_detect_either_framing():
    registry = InMemoryRegistry()
    writer = EventCodec(registry=registry)
    data = writer.encode(_event())
    header = read_header(data)
    assert data[0] == 0 and header.framing is Framing.CONFLUENT
    assert registry.subjects == {StatusChanged.avro_name: header.schema_key}

    event = _event()
    data = writer.encode(event)
    reader = EventCodec(registry=registry)  # a fresh process: knows the id only via the registry
    assert reader.decode(data, expect=StatusChanged) == event
    # the same reader reads single-object records too
    assert reader.decode(EventCodec().encode(_event())).status is TaskStatus.QUEUED


def test_a_registry_framed_record_without_a_registry_is_a_clear_error():
    data = EventCodec(registry=InMemoryRegistry()).encode(_event())
    with pytest.raises(UnknownSchemaError, match="SCHEMA_REGISTRY_URL"):
        EventCodec().decode(data)


def test_the_rest_client_speaks_the_confluent_api():
    seen: list[tuple[str, str, str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        seen.append((request.method, request.url.path, request.headers["content-type"], body))
        if request.method == "POST":
            return httpx.Response(200, json={"id": 7})
        if request.url.path == "/schemas/ids/7":
            return httpx.Response(200, json={"schema": json.dumps({"type": "string"})})
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})

    client = httpx.Client(base_url="http://registry.test", transport=httpx.MockTransport(handler))
    registry = HttpSchemaRegistry("http://registry.test", client=client)
    assert registry.register("compute.events.StatusChanged", '{"type":"string"}') == 7
    assert registry.schema_by_id(7) == {"type": "string"}
    method, path, content_type, body = seen[0]
    assert (method, path) == ("POST", "/subjects/compute.events.StatusChanged/versions")
    assert content_type == "application/vnd.schemaregistry.v1+json"
    assert body == {"schemaType": "AVRO", "schema": '{"type":"string"}'}
    with pytest.raises(SchemaRegistryError, match="HTTP 404"):
        registry.schema_by_id(8)
