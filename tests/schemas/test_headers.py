"""Ids, trace context and CloudEvents headers (schemas/headers.py), without a broker."""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime

import pytest

from schemas.emit import event_headers
from schemas.enums import TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged
from schemas.headers import (
    _TRACEPARENT,
    cloudevent_headers,
    header_builder,
    header_dict,
    json_record_headers,
    new_trace_id,
    new_traceparent,
    new_traceparent_bytes,
    new_uuid4,
    raw_header_builder,
    trace_id_of,
    trace_prefix,
)


def test_new_uuid4_is_a_canonical_version_4_uuid():
    for _ in range(2000):
        text = new_uuid4()
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # canonical: lower case, dashed


def test_ids_are_unique():
    ids = [new_uuid4() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    traces = [new_trace_id() for _ in range(10_000)]
    assert len(set(traces)) == len(traces)


def test_seeding_the_global_random_cannot_repeat_ids():
    random.seed(42)
    first = [new_uuid4(), new_traceparent()]
    random.seed(42)
    second = [new_uuid4(), new_traceparent()]
    assert first[0] != second[0] and first[1] != second[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave without running pytest's teardown
        try:
            os.write(write, " ".join(new_uuid4() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_uuid4() for _ in range(5)}
    assert len(child) == 5 and not child & parent


def test_traceparent_is_w3c_and_continues_a_trace():
    fresh = new_traceparent()
    assert _TRACEPARENT.match(fresh) and len(fresh) == 55
    trace = trace_id_of(fresh)
    assert trace is not None and int(trace, 16) != 0
    child = new_traceparent(trace)
    assert trace_id_of(child) == trace and child != fresh
    span = child.split("-")[2]
    assert len(span) == 16 and int(span, 16) != 0
    assert len(new_trace_id()) == 32
    prefix = trace_prefix(trace)
    spans = {new_traceparent_bytes(prefix).decode() for _ in range(100)}
    assert len(spans) == 100 and all(_TRACEPARENT.match(t) and trace_id_of(t) == trace for t in spans)


def _reference_headers(event_id, source, avro_name, traceparent):
    """The headers as specified (schemas/headers.py module docstring)."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", f"/compute/{source}".encode()),
        ("ce_type", avro_name.encode()),
        ("traceparent", traceparent.encode()),
    ]


def test_cloudevent_headers_match_the_reference():
    args = dict(event_id=new_uuid4(), source="producer", avro_name="compute.events.StatusChanged",
                traceparent=new_traceparent())
    assert cloudevent_headers(**args) == _reference_headers(**args)
    other = {**args, "event_id": new_uuid4(), "source": "worker", "avro_name": "compute.events.CancelRequested"}
    assert cloudevent_headers(**other) == _reference_headers(**other)


def test_headers_are_the_required_cloudevents_attributes_and_the_trace():
    headers = cloudevent_headers(event_id=new_uuid4(), source="producer",
                                 avro_name="compute.events.StatusChanged", traceparent=new_traceparent())
    assert [k for k, _ in headers] == ["ce_specversion", "ce_id", "ce_source", "ce_type", "traceparent"]


def test_raw_header_builder_is_the_layout_of_header_builder():
    raw = raw_header_builder("compute.events.StatusChanged", "producer")
    assert raw is raw_header_builder("compute.events.StatusChanged", "producer")
    event_id, traceparent = new_uuid4(), new_traceparent()
    built = header_builder("compute.events.StatusChanged", "producer")(event_id, traceparent)
    assert raw(event_id.encode(), traceparent.encode()) == built


def test_header_builder_is_cached_per_type_and_source():
    build = header_builder("compute.events.StatusChanged", "producer")
    assert build is header_builder("compute.events.StatusChanged", "producer")
    assert build is not header_builder("compute.events.StatusChanged", "worker")
    assert build is not header_builder("compute.events.CancelRequested", "producer")
    first, second = build("a", "t1"), build("b", "t2")
    assert first is not second and header_dict(first)["ce_id"] == "a" and header_dict(second)["ce_id"] == "b"


def test_json_record_headers_are_the_state_and_generations_layout():
    # byte for byte what the processors' state and generation records and the generations
    # topic's requests carried before the three builders became this one
    assert json_record_headers(event_id="t-1/3", source="processors", ce_type="compute.state.TaskState",
                               subject="t-1", content_type=b"application/vnd.compute.state+json") == [
        ("ce_specversion", b"1.0"), ("ce_id", b"t-1/3"), ("ce_source", b"/compute/processors"),
        ("ce_type", b"compute.state.TaskState"), ("ce_subject", b"t-1"),
        ("content-type", b"application/vnd.compute.state+json")]


def test_event_headers_describe_the_event():
    env = Envelope(event_id=new_uuid4(), task_id=new_uuid4(), task_type=TaskType.EDITING,
                   occurred_at=datetime.now(UTC), source="worker")
    event = StatusChanged(envelope=env, status=TaskStatus.QUEUED)
    traceparent = new_traceparent()
    headers = event_headers(event, traceparent)
    assert headers == _reference_headers(env.event_id, "worker", StatusChanged.avro_name, traceparent)
