"""The workflow client: writes ``WorkflowRequested`` and ``WorkflowCommandRequested`` records to
``<prefix>.workflows`` (keyed by workflow id), where the processors' workflow engine
(``processors/workflows.py``) reads them. Each call returns once the broker acknowledged the
record (:class:`~producers.errors.DeliveryError` if it did not in time).

It sends; it does not judge. This package sits below ``workflows/`` (docs/DECISIONS.md,
"Layers"), so a caller checks a spec with ``workflows.spec.validate_workflow`` before
:meth:`WorkflowProducer.create` (the API answers 422 then). The engine checks it again and
records a spec that fails as a FAILED workflow, so a faulty writer is visible, not silent.
Blocking: the API calls it from a worker thread. Not thread-safe beyond confluent-kafka's
producer; one per process is enough (a call waits for its own record only).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producers.errors import DeliveryError, TaskTooLargeError
from schemas.codec import EventCodec
from schemas.emit import produce_record
from schemas.headers import header_builder, new_traceparent, new_uuid4, task_trace_id
from schemas.kafka_settings import KafkaSettings
from schemas.workflow_events import (
    WorkflowCommand,
    WorkflowCommandRequested,
    WorkflowRequested,
    WorkflowSpec,
    new_workflow_id,
)

# Few records, each waited for: no batching delay; idempotent so a retry inside librdkafka
# does not write a command twice.
_PRODUCER = {"linger.ms": 0, "enable.idempotence": True, "acks": "all"}


class WorkflowProducer:
    def __init__(self, kafka: KafkaSettings, *, codec: EventCodec | None = None,
                 source: str = "api", ack_timeout_s: float = 10.0) -> None:
        self._topic = kafka.topics.workflows
        self._codec = codec or EventCodec()
        self._source = source
        self._ack_timeout_s = ack_timeout_s
        self._producer = Producer({**kafka.producer_config(), **_PRODUCER})
        self._lock = threading.Lock()

    def create(self, spec: WorkflowSpec, *, start: bool = False, workflow_id: str | None = None,
               origin_zone: str | None = None, origin_tenant_id: str | None = None,
               webhook_url: str | None = None, requested_by: str | None = None) -> WorkflowRequested:
        """Request a workflow (CREATED; RUNNING at once with ``start``); its id is the returned
        event's ``workflow_id`` (:func:`new_workflow_id` unless given: it must be one)."""
        event = WorkflowRequested(
            event_id=new_uuid4(), workflow_id=workflow_id or new_workflow_id(),
            occurred_at=datetime.now(UTC), source=self._source, spec=spec, start=start,
            origin_zone=origin_zone, origin_tenant_id=origin_tenant_id, webhook_url=webhook_url,
            requested_by=requested_by)
        self._send(event.workflow_id, event)
        return event

    def command(self, workflow_id: str, command: WorkflowCommand, *, reason: str | None = None,
                requested_by: str | None = None) -> WorkflowCommandRequested:
        event = WorkflowCommandRequested(
            event_id=new_uuid4(), workflow_id=workflow_id, occurred_at=datetime.now(UTC),
            source=self._source, command=command, reason=reason, requested_by=requested_by)
        self._send(workflow_id, event)
        return event

    def start(self, workflow_id: str, *, requested_by: str | None = None) -> WorkflowCommandRequested:
        return self.command(workflow_id, WorkflowCommand.START, requested_by=requested_by)

    def pause(self, workflow_id: str, *, requested_by: str | None = None) -> WorkflowCommandRequested:
        return self.command(workflow_id, WorkflowCommand.PAUSE, requested_by=requested_by)

    def resume(self, workflow_id: str, *, requested_by: str | None = None) -> WorkflowCommandRequested:
        return self.command(workflow_id, WorkflowCommand.RESUME, requested_by=requested_by)

    def cancel(self, workflow_id: str, *, reason: str | None = None,
               requested_by: str | None = None) -> WorkflowCommandRequested:
        return self.command(workflow_id, WorkflowCommand.CANCEL, reason=reason, requested_by=requested_by)

    def _send(self, workflow_id: str, event: WorkflowRequested | WorkflowCommandRequested) -> None:
        value = self._codec.encode(event)
        headers = header_builder(event.avro_name, self._source)(
            event.event_id, new_traceparent(task_trace_id(workflow_id)))
        done = threading.Event()
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            done.set()

        with self._lock:
            try:
                produce_record(self._producer, self._topic, value, workflow_id, headers, delivered)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                raise TaskTooLargeError("the workflow's record", len(value), None) from None
        deadline = time.monotonic() + self._ack_timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)  # serves this record's report (and any other's)
        if errors:
            if errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise TaskTooLargeError("the workflow's record", len(value), None)
            raise DeliveryError([(workflow_id, errors[0].str())])
        if not done.is_set():
            raise DeliveryError([(workflow_id, f"not acknowledged within {self._ack_timeout_s}s")])

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
