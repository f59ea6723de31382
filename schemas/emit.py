"""Produce one event the way every writer does: CloudEvents headers + framed Avro, keyed by task id.

Shared by the producers, the workers and the processors so that every record on every topic has
the same headers (``schemas/headers.py``) and framing (``schemas/codec.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import Producer

from schemas.codec import EventCodec
from schemas.events import AvroRecord
from schemas.headers import Headers, header_builder, new_traceparent, task_trace_id

DeliveryCallback = Callable[[Any, Any], None]  # (KafkaError | None, Message)

# How long to serve delivery reports before trying again when librdkafka's local queue is full.
_QUEUE_FULL_WAIT_S = 0.05


def event_headers(event: AvroRecord, traceparent: str) -> Headers:
    """The CloudEvents binary-mode headers of an event that has an ``envelope``."""
    env = event.envelope  # type: ignore[attr-defined]
    return header_builder(event.avro_name, env.source)(env.event_id, traceparent)


def produce_event(
    producer: Producer,
    topic: str,
    event: AvroRecord,
    *,
    codec: EventCodec,
    traceparent: str | None = None,
    on_delivery: DeliveryCallback | None = None,
    extra_headers: Sequence[tuple[str, bytes]] = (),
) -> str:
    """Encode ``event`` and produce it to ``topic`` keyed by its task id; return the traceparent
    used (a new span in the task's derived trace, ``task_trace_id``, unless one is given: a
    writer that does not know the task's trace puts every status of it in one trace). ``extra_headers`` follow the standard ones. Delivery
    is asynchronous: flush or poll the producer. Blocks (serving delivery reports) while the
    local queue is full, instead of failing."""
    task_id = event.envelope.task_id  # type: ignore[attr-defined]
    traceparent = traceparent or new_traceparent(task_trace_id(task_id))
    produce_record(producer, topic, codec.encode(event), task_id,
                   [*event_headers(event, traceparent), *extra_headers], on_delivery)
    return traceparent


def produce_record(
    producer: Producer,
    topic: str,
    value: bytes,
    key: str,
    headers: Headers,
    on_delivery: DeliveryCallback | None = None,
) -> None:
    """``producer.produce`` of an encoded record, serving delivery reports while librdkafka's
    local queue is full instead of failing (the queue-full policy of :func:`produce_event`)."""
    try:
        producer.produce(topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery)
    except BufferError:
        while True:
            producer.poll(_QUEUE_FULL_WAIT_S)
            try:
                producer.produce(topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery)
                return
            except BufferError:
                continue
