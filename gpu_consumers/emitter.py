"""What a worker writes to Kafka: status events, hand-back records and dead letters.

Every record goes through one idempotent producer, keyed by task id, with CloudEvents headers
(``schemas/emit.py``). Whatever decides a commit waits for the broker's acknowledgement first
(:class:`Ack` + :meth:`Emitter.flush`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message, Producer

from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import Envelope, StatusChanged, TaskError
from schemas.headers import Headers, header_dict, new_traceparent, trace_id_of
from schemas.topics import Topics

log = logging.getLogger("gpu_consumers.worker")

# How long a terminal status (or a hand-back record, or a dead letter) may take to be
# acknowledged by the broker before the worker gives up on it and does not commit the offset.
ACK_TIMEOUT_S = 30.0
# Dead-letter error messages are headers: keep them readable, not megabytes of a bad record.
_ERROR_MESSAGE_MAX = 2000


class Ack:
    """Delivery report of one record: ``error`` is None once the broker acknowledged it."""

    def __init__(self) -> None:
        self.error: str | None = "not delivered"

    def __call__(self, err: Any, msg: Any) -> None:
        self.error = None if err is None else err.str()


def task_id_of_key(key: bytes | None) -> str | None:
    """The task id a record key names, if it is a UUID."""
    try:
        return str(uuid.UUID(key.decode())) if key else None
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass
class Emitter:
    producer: Producer
    codec: EventCodec
    topics: Topics
    worker_id: str
    source: str = "worker"
    zone: str | None = None  # WORKER_ORIGIN_ZONE: where this worker runs

    def status(self, env: Envelope, attempt: int, status: TaskStatus, generation_id: str | None,
               event_id: str | None = None, **fields: Any) -> StatusChanged:
        """A status event of the task ``env`` describes, for ``attempt``, from this worker (with
        a given ``event_id``: a deterministic one, as a worker stop's FAILED). Its origin
        instance and zone are this worker's (who wrote it, issue 17); the tenant, origin version
        and entity id stay the task's."""
        envelope = env.model_copy(update={
            "event_id": event_id or str(uuid.uuid4()), "occurred_at": datetime.now(UTC),
            "attempt": attempt, "source": self.source,
            "origin_instance": self.worker_id, "origin_zone": self.zone})
        return StatusChanged(envelope=envelope, status=status, worker_id=self.worker_id,
                             generation_id=generation_id, **fields)

    def send(self, topic: str, event: Any, trace_id: str | None, ack: Ack | None = None,
             headers: Headers | None = None) -> None:
        """Produce an event, continuing the trace ``trace_id`` when known; ``headers`` are added
        to the standard ones."""
        produce_event(self.producer, topic, event, codec=self.codec,  # no trace: the task's own
                      traceparent=new_traceparent(trace_id) if trace_id else None, on_delivery=ack,
                      extra_headers=headers or ())

    def flush(self, *acks: Ack) -> bool:
        """Wait for every outstanding record; True when all ``acks`` were acknowledged."""
        self.producer.flush(ACK_TIMEOUT_S)
        return all(ack.error is None for ack in acks)

    def dead_letter(self, msg: Message, error: Exception, task_type: TaskType,
                    task_id: str | None = None) -> bool:
        """Copy a record that cannot be read to ``<topic>.dlq`` (raw key, value and headers,
        plus ``error.class``, ``error.message``, ``original.topic``, ``original.partition``,
        ``original.offset``), and fail its task with INVALID_INPUT: ``task_id`` (the envelope's,
        when it could be read), else the key when it is a task id. The FAILED continues the
        record's ``traceparent`` (else the task's derived trace). True once the broker
        acknowledged everything."""
        topic = msg.topic()
        headers = [*(msg.headers() or []),
                   ("error.class", type(error).__name__.encode()),
                   ("error.message", str(error)[:_ERROR_MESSAGE_MAX].encode()),
                   ("original.topic", topic.encode()),
                   ("original.partition", str(msg.partition()).encode()),
                   ("original.offset", str(msg.offset()).encode())]
        acks = [Ack()]
        self.producer.produce(self.topics.dlq(topic), key=msg.key(), value=msg.value(),
                              headers=headers, on_delivery=acks[0])
        task_id = task_id or task_id_of_key(msg.key())
        if task_id is not None:
            # The record's own attempt is unreadable: 1 is the attempt every task starts with.
            error_info = TaskError.of(ErrorCode.INVALID_INPUT,
                                      f"the task record could not be read: {error}")
            event = self.status(Envelope.new(task_id, task_type, source=self.source), 1,
                                TaskStatus.FAILED, None, error=error_info)
            acks.append(Ack())
            self.send(self.topics.status, event, trace_id_of(header_dict(msg.headers()).get("traceparent")),
                      acks[1])
        log.warning("record %s[%d]@%d dead-lettered: %s", topic, msg.partition(), msg.offset(),
                    error, extra={"task_id": task_id})
        return self.flush(*acks)
