"""The bytes of a submit's three records: the task record and its PENDING and QUEUED statuses.

From one submit to the next only a few values of these records change: the event id, the task
id, the time and the entity id in the envelope, and, in the task record, what follows the envelope
(params, idempotency key, orchestration, webhook URL). Everything else - framing prefix, task type,
attempt, source, origin (with its version), the status and its null fields - is the same for every
task of one params model, attempt, origin and (for the statuses) with or without a generation id.

So :class:`SubmitRecords` writes each record once with sentinel values through the codec (the
encoder of record: ``schemas/avro_writer.py``'s generated writer, byte-for-byte fastavro), cuts it
at the sentinels (``split_template``) and afterwards only joins the constant pieces with the new
values; the task record's fields after the envelope come from the same generated code, compiled
for just those fields: a tenth of the cost of building and encoding the four pydantic events
(docs/PERFORMANCE.md). tests/producers/test_submit_records.py checks the bytes against the codec's encoding
of the equivalent validated models, for every task type, framing and optional field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import avro_files
from schemas.avro_writer import compile_writer, micros_varint, split_template
from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.events import TASK_SUBMITTED_MODELS, Envelope, StatusChanged
from schemas.headers import RawHeaderBuilder, raw_header_builder

# Sentinels: canonical UUID text (36 characters, like every real id, so the length prefix in the
# piece before stays right) and a time, each distinct enough to occur once in a record.
_EVENT_ID = "5e5e5e5e-e1d0-4e1d-8e1d-5e5e5e5e5e5e"
_TASK_ID = "7a5c7a5c-1d1d-4d1d-9d1d-7a5c7a5c7a5c"
_GENERATION_ID = "6e6e6e6e-9d9d-4d9d-ad9d-6e6e6e6e6e6e"
_TIME_MICROS = 1_000_000_000_123_457  # 2001-09-09T01:46:40.123457Z
_TIME = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=_TIME_MICROS)
# The entity id is free text of any length: its hole is the whole field (union branch, length,
# text), filled with entity_field()'s encoding of the real value.
_ENTITY_ID = "\x01entity-id-sentinel-e7e7e7e7"
_TASK_FIELDS = ("params", "idempotency_key", "orchestration", "webhook_url")  # after "envelope"
STATUSES = (TaskStatus.PENDING, TaskStatus.QUEUED)


class SubmitRecords:
    """The record templates of one params model, attempt, origin and source, with or without a
    generation id, for one codec, and the task record's header builder.

    :meth:`task` writes the task record. A status record (the producer joins it inline, in its
    loop over acknowledged tasks) is, with ``p0..p5 = status_pieces[i]`` for ``STATUSES[i]``::

        p0 + event_id + p1 + task_id + p2 + micros + p3 + entity + p4 + generation_id + p5

    ids as canonical UUID text (bytes), ``micros`` the encoded time (``micros_varint``),
    ``entity`` the encoded entity id field (:func:`entity_field`), and ``generation_id`` b"" when
    made without one (``p5`` is then b"" too).
    """

    __slots__ = ("task_pieces", "task_fields", "status_pieces", "task_headers")

    task_pieces: tuple[bytes, ...]
    task_fields: Any  # (params, idempotency_key, orchestration, webhook_url, prefix) -> bytes
    status_pieces: tuple[tuple[bytes, ...], ...]
    task_headers: RawHeaderBuilder

    def __init__(
        self,
        codec: EventCodec,
        params: Any,
        *,
        attempt: int,
        source: str,
        origin_instance: str | None,
        origin_zone: str | None,
        origin_tenant_id: str | None,
        with_generation_id: bool,
        origin_version: str | None = None,
    ) -> None:
        """``params``: any valid instance of the params model (only its type and encoding matter
        here). The other values are the constant ones of the records, validated on the way."""
        model = TASK_SUBMITTED_MODELS[params.task_type]
        schema = avro_files.schema_json(model.avro_name)
        if tuple(f["name"] for f in schema["fields"]) != ("envelope", *_TASK_FIELDS):
            raise TypeError(f"{model.avro_name}'s fields changed: update producers/submit_records.py")
        envelope = Envelope(
            event_id=_EVENT_ID, task_id=_TASK_ID, task_type=params.task_type, attempt=attempt,
            occurred_at=_TIME, source=source, origin_instance=origin_instance,
            origin_zone=origin_zone, origin_tenant_id=origin_tenant_id,
            origin_version=origin_version, entity_id=_ENTITY_ID,
        )
        holes = [_EVENT_ID.encode(), _TASK_ID.encode(), micros_varint(_TIME_MICROS), entity_field(_ENTITY_ID)]

        # The task record: framing prefix + envelope (with holes), then the other fields.
        self.task_fields = compile_writer(model, schema, _TASK_FIELDS)
        whole = codec.encode(model(envelope=envelope, params=params))
        rest = self.task_fields(params, None, None, None)
        if not whole.endswith(rest):
            raise AssertionError(f"{model.avro_name}: its fields writer disagrees with its writer")
        self.task_pieces = split_template(whole[: len(whole) - len(rest)], holes)

        # The statuses: prefix + envelope (with holes) + status + nulls + generation id (a hole,
        # or the null branch; pieces[4] is then empty and so is the value joined before it).
        generation_id = _GENERATION_ID if with_generation_id else None
        status_holes = holes + [_GENERATION_ID.encode()] if with_generation_id else holes
        self.status_pieces = tuple(
            _six(split_template(
                codec.encode(StatusChanged(envelope=envelope, status=status, generation_id=generation_id)),
                status_holes,
            ))
            for status in STATUSES
        )
        self.task_headers = raw_header_builder(model.avro_name, source)

    def task(
        self, event_id: bytes, task_id: bytes, micros: bytes, params: Any,
        idempotency_key: str | None, orchestration: Any, webhook_url: str | None,
        entity: bytes = b"\x00",
    ) -> bytes:
        """The task record: ids as canonical UUID text (bytes), ``micros`` the encoded time
        (``avro_writer.micros_varint``), ``entity`` the encoded entity id (:func:`entity_field`;
        the default is null), the other fields as the TaskSubmitted model holds them."""
        p0, p1, p2, p3, p4 = self.task_pieces
        return self.task_fields(params, idempotency_key, orchestration, webhook_url,
                                b"".join((p0, event_id, p1, task_id, p2, micros, p3, entity, p4)))


def entity_field(entity_id: str | None) -> bytes:
    """The Avro encoding of the envelope's ``entity_id`` (a ``["null", "string"]`` union): the
    branch index, then the text's length and UTF-8 bytes. Raises UnicodeEncodeError for text
    UTF-8 cannot carry."""
    if entity_id is None:
        return b"\x00"
    data = entity_id.encode("utf-8")
    return b"\x02" + micros_varint(len(data)) + data  # a length is a zigzag long, like a time


def _six(pieces: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return pieces if len(pieces) == 6 else (*pieces, b"")
