"""The schema evolution rule: new optional fields with defaults read old events, old readers read
new events (docs/SCHEMA_EVOLUTION.md)."""

from __future__ import annotations

import copy
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fastavro import schemaless_reader, schemaless_writer

from schemas import avro_files
from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.errors import UnknownSchemaError
from schemas.events import Envelope, StatusChanged, TaskError, all_event_models
from schemas.evolution import full_compatibility_problems
from schemas.framing import single_object_prefix
from schemas.schema_store import SchemaStoreReader, publish_schema
from schemas.topic_admin import ensure_topics

STATUS = StatusChanged.avro_name
HISTORY = Path(avro_files.SCHEMA_DIR) / "history"


def _status_event() -> StatusChanged:
    env = Envelope(
        event_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), task_type=TaskType.REFINE, attempt=2,
        occurred_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC), source="worker/refine",
    )
    return StatusChanged(
        envelope=env, status=TaskStatus.FAILED, message="out of memory",
        error=TaskError(code=ErrorCode.PROVIDER_ERROR, message="CUDA OOM", retryable=True),
    )


def _v2(schema: dict) -> dict:
    """StatusChanged with a new optional field at the top and one inside a nested record."""
    new = copy.deepcopy(schema)
    new["fields"].append({"name": "priority", "type": ["null", "int"], "default": None, "doc": "new"})
    env = next(f for f in new["fields"] if f["name"] == "envelope")["type"]
    env["fields"].insert(2, {"name": "region", "type": "string", "default": "eu", "doc": "new"})
    return new


def _encode_with(schema: dict, record: dict) -> bytes:
    parsed = avro_files.parse(schema)
    buf = io.BytesIO()
    buf.write(single_object_prefix(avro_files.fingerprint(parsed)))
    schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def test_released_schemas_are_kept_full_compatible():
    released = sorted(HISTORY.glob("*.avsc"))
    assert len(released) >= len(all_event_models())
    for path in released:
        name = path.name.split(".v")[0]
        old = json.loads(path.read_text())
        assert full_compatibility_problems(old, avro_files.schema_json(name)) == [], path.name


def test_rule_accepts_optional_additions_and_flags_breaking_changes():
    base = avro_files.schema_json(STATUS)
    assert full_compatibility_problems(base, _v2(base)) == []
    assert full_compatibility_problems(_v2(base), base) == []  # removal of fields with defaults

    required = copy.deepcopy(base)
    required["fields"].append({"name": "owner", "type": "string"})
    assert "owner: added without a default" in " ".join(full_compatibility_problems(base, required))

    dropped = copy.deepcopy(base)
    dropped["fields"] = [f for f in dropped["fields"] if f["name"] != "status"]
    assert "status: removed but had no default" in " ".join(full_compatibility_problems(base, dropped))

    retyped = copy.deepcopy(base)
    next(f for f in retyped["fields"] if f["name"] == "worker_id")["type"] = ["null", "long"]
    assert full_compatibility_problems(base, retyped)

    more_symbols = copy.deepcopy(base)
    status_enum = next(f for f in more_symbols["fields"] if f["name"] == "status")["type"]
    status_enum["symbols"] = [*status_enum["symbols"], "PAUSED"]
    assert "enum symbols changed" in " ".join(full_compatibility_problems(base, more_symbols))


def test_a_new_reader_reads_old_events_filling_defaults():
    old_bytes = EventCodec().encode(_status_event())
    old_parsed = avro_files.parsed_schema(STATUS)
    new_parsed = avro_files.parse(_v2(avro_files.schema_json(STATUS)))
    record = schemaless_reader(io.BytesIO(old_bytes[10:]), old_parsed, new_parsed)
    assert record["priority"] is None and record["envelope"]["region"] == "eu"
    assert record["error"]["message"] == "CUDA OOM"


def test_an_old_reader_needs_the_writer_schema_and_finds_it_in_the_schema_store(kafka_settings):
    ensure_topics(kafka_settings)
    event = _status_event()
    v2 = _v2(avro_files.schema_json(STATUS))
    record = event.to_avro()
    record["priority"] = 5
    record["envelope"] = {**record["envelope"], "region": "us"}
    new_bytes = _encode_with(v2, record)

    with pytest.raises(UnknownSchemaError):
        EventCodec().decode(new_bytes)  # no schema store: the fingerprint is unknown

    producer = Producer(kafka_settings.client_config())
    publish_schema(producer, kafka_settings, v2)
    assert producer.flush(10) == 0
    old_reader = EventCodec(lookup_fingerprint=SchemaStoreReader(kafka_settings))
    assert old_reader.decode(new_bytes, expect=StatusChanged) == event


def test_origin_version_and_entity_id_cross_the_v1_line_both_ways():
    """Issue 17 added envelope.origin_version and entity_id: a v1 reader reads today's events
    (the two fields dropped), and today's reader reads v1 events (both null)."""
    v1 = avro_files.parse(json.loads((HISTORY / f"{STATUS}.v1.avsc").read_text()))
    current = avro_files.parsed_schema(STATUS)
    event = _status_event()
    event = event.model_copy(update={"envelope": event.envelope.model_copy(
        update={"origin_version": "backend-4.2.1", "entity_id": "order-991"})})
    new_bytes = EventCodec().encode(event)
    old_view = schemaless_reader(io.BytesIO(new_bytes[10:]), current, v1)
    assert "origin_version" not in old_view["envelope"] and "entity_id" not in old_view["envelope"]
    assert str(old_view["envelope"]["task_id"]) == event.envelope.task_id and old_view["error"]["message"] == "CUDA OOM"

    record = event.to_avro()
    record["envelope"] = {k: v for k, v in record["envelope"].items() if k not in ("origin_version", "entity_id")}
    buf = io.BytesIO()
    schemaless_writer(buf, v1, record)
    read = schemaless_reader(io.BytesIO(buf.getvalue()), v1, current)
    assert read["envelope"]["origin_version"] is None and read["envelope"]["entity_id"] is None
    assert EventCodec().decode(new_bytes, expect=StatusChanged).envelope.entity_id == "order-991"
