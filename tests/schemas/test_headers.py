"""Ids, trace context and CloudEvents headers (schemas/headers.py), without a broker."""

from __future__ import annotations

import os
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from schemas.codec import EventCodec
from schemas.emit import event_headers
from schemas.enums import TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged
from schemas.headers import (
    _TRACEPARENT,
    ce_time_micros,
    cloudevent_headers,
    header_builder,
    header_dict,
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


def _reference_headers(event_id, source, avro_name, subject, occurred_at, framing, traceparent):
    """The headers as first specified (schemas/headers.py module docstring)."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", f"/compute/{source}".encode()),
        ("ce_type", avro_name.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", occurred_at.isoformat().encode()),
        ("content-type", f"application/avro; framing={framing}".encode()),
        ("traceparent", traceparent.encode()),
    ]


@pytest.mark.parametrize("microsecond", [0, 7, 999_999])
def test_cloudevent_headers_match_the_reference(microsecond):
    when = datetime(2024, 5, 17, 12, 30, 1, microsecond, tzinfo=timezone.utc)
    args = dict(event_id=new_uuid4(), source="producer", avro_name="compute.events.StatusChanged",
                subject=new_uuid4(), occurred_at=when, framing="single-object",
                traceparent=new_traceparent())
    assert cloudevent_headers(**args) == _reference_headers(**args)
    other = {**args, "event_id": new_uuid4(), "source": "worker", "framing": "confluent"}
    assert cloudevent_headers(**other) == _reference_headers(**other)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("micros", [
    0, 7, 999_999, 1_000_000, 1_000_000_000_000_000, 1_795_446_321_000_000, 1_795_446_321_000_001,
    -1, -1_000_000, -62_135_596_800_000_000, 253_402_300_799_999_998,
])
def test_ce_time_micros_is_isoformat_of_that_time(micros):
    when = _EPOCH + timedelta(microseconds=micros)
    assert ce_time_micros(micros) == when.isoformat().encode()
    assert ce_time_micros(micros + 1) == (when + timedelta(microseconds=1)).isoformat().encode()


def test_ce_time_micros_over_many_seconds():
    rng = random.Random(5)
    start = 1_795_446_321_000_000
    for micros in sorted(start + rng.randrange(0, 5_000_000) for _ in range(2000)):
        assert ce_time_micros(micros) == (_EPOCH + timedelta(microseconds=micros)).isoformat().encode()


def test_raw_header_builder_is_the_layout_of_header_builder():
    raw = raw_header_builder("compute.events.StatusChanged", "producer", "single-object")
    assert raw is raw_header_builder("compute.events.StatusChanged", "producer", "single-object")
    when = datetime(2024, 5, 17, 12, 30, 1, 5, tzinfo=timezone.utc)
    ids, traceparent = (new_uuid4(), new_uuid4()), new_traceparent()
    built = header_builder("compute.events.StatusChanged", "producer", "single-object")(*ids, when, traceparent)
    assert raw(ids[0].encode(), ids[1].encode(), when.isoformat().encode(), traceparent.encode()) == built


def test_header_builder_is_cached_per_type_source_and_framing():
    build = header_builder("compute.events.StatusChanged", "producer", "single-object")
    assert build is header_builder("compute.events.StatusChanged", "producer", "single-object")
    assert build is not header_builder("compute.events.StatusChanged", "worker", "single-object")
    now = datetime.now(timezone.utc)
    first, second = build("a", "s", now, "t1"), build("b", "s", now, "t2")
    assert first is not second and header_dict(first)["ce_id"] == "a" and header_dict(second)["ce_id"] == "b"


def test_event_headers_describe_the_event():
    env = Envelope(event_id=new_uuid4(), task_id=new_uuid4(), task_type=TaskType.EDITING,
                   occurred_at=datetime.now(timezone.utc), source="worker")
    event = StatusChanged(envelope=env, status=TaskStatus.QUEUED)
    traceparent = new_traceparent()
    headers = event_headers(event, EventCodec(), traceparent)
    assert headers == _reference_headers(env.event_id, "worker", StatusChanged.avro_name, env.task_id,
                                         env.occurred_at, "single-object", traceparent)
