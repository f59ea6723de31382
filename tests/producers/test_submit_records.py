"""The record templates of a submit (producers/submit_records.py) write exactly what the codec -
the encoder of record, byte-for-byte fastavro - writes for the same validated events.

For every task type, both framings, attempts, origins, with and without a generation id and the
task's optional fields, and times from 1970 and before to year 9999: the task record from
``SubmitRecords.task`` and each status joined as its docstring lays out (the producer's inline
join; tests/producers/test_submit_fast_path.py checks the producer's own records) equal
``codec.encode`` of the models built and validated the ordinary way.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from producers import submit_records
from producers.examples import SEED_EXAMPLES
from producers.submit import validate_params
from producers.submit_records import STATUSES, SubmitRecords
from schemas.avro_writer import micros_varint
from schemas.codec import EventCodec
from schemas.enums import GenerationStrategy, GenerationType, TaskStatus, TaskType
from schemas.events import TASK_SUBMITTED_MODELS, Envelope, Orchestration, StatusChanged
from schemas.headers import new_uuid4
from tests.schemas.test_registry_framing import InMemoryRegistry

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMES = [1_795_446_321_123_456, 1_795_446_321_000_000, 0, 1, -1, 8191, -62_135_596_800_000_000,
         253_402_300_799_999_999, submit_records._TIME_MICROS]
KINDS = [  # attempt, origin (instance, zone, tenant, version), with a generation id
    (1, (None, None, None, None), False),
    (1, (None, None, None, None), True),
    (7, ("host-1", "eu-west-1", "acme", "backend-4.2.1"), False),
    (2**31 - 1, ("", "zone ü 🎉", None, ""), True),
]
# Entity ids: none, empty, short, non-ASCII, and long enough for a two-byte length.
ENTITIES = [None, "", "order-42", "entité ü 🎉", "e" * 5000]


def _status(records: SubmitRecords, index: int, event_id: bytes, task_id: bytes, micros: bytes, gid: bytes,
            entity: bytes = b"\x00") -> bytes:
    p0, p1, p2, p3, p4, p5 = records.status_pieces[index]
    return b"".join((p0, event_id, p1, task_id, p2, micros, p3, entity, p4, gid, p5))


@pytest.mark.parametrize("task_type", list(TaskType))
@pytest.mark.parametrize("registry", [False, True], ids=["single-object", "confluent"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"attempt{k[0]}-gid{k[2]}")
def test_templates_write_the_codecs_bytes(task_type, registry, kind):
    attempt, (instance, zone, tenant, version), with_gid = kind
    codec = EventCodec(registry=InMemoryRegistry()) if registry else EventCodec()
    params = validate_params(task_type, SEED_EXAMPLES[task_type])
    records = SubmitRecords(codec, params, attempt=attempt, source="producer/ü", origin_instance=instance,
                            origin_zone=zone, origin_tenant_id=tenant, with_generation_id=with_gid,
                            origin_version=version)
    model = TASK_SUBMITTED_MODELS[task_type]
    rng = random.Random(f"{task_type}{registry}{kind}")
    for i, micros in enumerate(TIMES):
        entity_id = ENTITIES[i % len(ENTITIES)]
        task_id, event_ids = new_uuid4(), [new_uuid4() for _ in range(3)]
        orchestration = Orchestration(
            generation_id=new_uuid4(), prediction_index=rng.randrange(100),
            generation_type=rng.choice(list(GenerationType)), strategy=rng.choice(list(GenerationStrategy)),
        ) if with_gid else None
        extras = rng.random() < 0.5
        envelope = Envelope(event_id=event_ids[0], task_id=task_id, task_type=task_type, attempt=attempt,
                            occurred_at=_EPOCH + timedelta(microseconds=micros), source="producer/ü",
                            origin_instance=instance, origin_zone=zone, origin_tenant_id=tenant,
                            origin_version=version, entity_id=entity_id)
        task = model(envelope=envelope, params=params, orchestration=orchestration,
                     idempotency_key="key ü" if extras else None,
                     webhook_url="https://hooks.example.com/x?y=1" if extras else None)
        encoded = micros_varint(micros)
        entity = submit_records.entity_field(entity_id)
        assert records.task(event_ids[0].encode(), task_id.encode(), encoded, params, task.idempotency_key,
                            orchestration, task.webhook_url, entity) == codec.encode(task)
        gid = orchestration.generation_id.encode() if orchestration is not None else b""
        for index, (status, event_id) in enumerate(zip(STATUSES, event_ids[1:])):
            expected = StatusChanged(
                envelope=envelope.model_copy(update={"event_id": event_id}), status=status,
                generation_id=orchestration.generation_id if orchestration is not None else None,
            )
            assert (_status(records, index, event_id.encode(), task_id.encode(), encoded, gid, entity)
                    == codec.encode(expected))


def test_statuses_are_pending_then_queued():
    assert STATUSES == (TaskStatus.PENDING, TaskStatus.QUEUED)


def test_the_sentinels_as_real_values_give_the_right_bytes():
    codec = EventCodec()
    params = validate_params(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    records = SubmitRecords(codec, params, attempt=1, source="producer", origin_instance=None,
                            origin_zone=None, origin_tenant_id=None, with_generation_id=True)
    event_id, task_id, gid = submit_records._EVENT_ID, submit_records._TASK_ID, submit_records._GENERATION_ID
    envelope = Envelope(event_id=event_id, task_id=task_id, task_type=TaskType.GENERATION,
                        occurred_at=submit_records._TIME, source="producer")
    micros = micros_varint(submit_records._TIME_MICROS)
    task = TASK_SUBMITTED_MODELS[TaskType.GENERATION](envelope=envelope, params=params)
    assert records.task(event_id.encode(), task_id.encode(), micros, params, None, None, None) == codec.encode(task)
    pending = StatusChanged(envelope=envelope, status=TaskStatus.PENDING, generation_id=gid)
    assert _status(records, 0, event_id.encode(), task_id.encode(), micros, gid.encode()) == codec.encode(pending)


def test_an_origin_holding_a_sentinel_is_refused_not_miswritten():
    params = validate_params(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    with pytest.raises(ValueError, match="occurs 2 times"):
        SubmitRecords(EventCodec(), params, attempt=1, source="producer", origin_instance=submit_records._TASK_ID,
                      origin_zone=None, origin_tenant_id=None, with_generation_id=False)
