"""The submission client: validate → serialize → produce, idempotently.

``TaskProducer.submit`` checks a task against its contract, produces it to its per-type topic
keyed by task id (idempotent producer, ``acks=all``), and once the broker has acknowledged it
emits PENDING then QUEUED on the status topic. Nothing is produced for an invalid task.

A caller-supplied idempotency key always maps to the same task id (UUIDv5 of tenant + key), so a
repeated submit can never become a second task: this producer drops a repeat it has already
sent, and any other producer's repeat carries the same id, which workers and the lifecycle fold
treat as the same task.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydantic import ValidationError

from producers.errors import DeliveryError
from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.errors import TaskValidationError
from schemas.events import (
    TASK_SUBMITTED_MODELS,
    Envelope,
    Orchestration,
    StatusChanged,
    TaskSubmitted,
    all_event_models,
)
from schemas.emit import produce_event
from schemas.headers import new_traceparent, trace_id_of
from schemas.kafka_settings import KafkaSettings
from schemas.schema_store import publish_schemas
from schemas.task_params import PARAMS_MODELS

# Fixed namespace for idempotency-key task ids; changing it would break every stored key.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5f1d3c8e-7a43-4b8e-9a51-6c0e2f4d9b17")

# librdkafka settings for the task producer. Idempotence implies acks=all and bounded in-flight
# requests; linger of 5 ms lets bursts batch without hurting single-task latency much.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
}


def task_id_for(idempotency_key: str, tenant_id: str | None = None) -> str:
    """The task id an idempotency key stands for. Keys are scoped per tenant."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id or ''}\x1f{idempotency_key}"))


@dataclass(frozen=True)
class Origin:
    """Where a task comes from (the envelope's origin fields)."""

    instance: str | None = None
    zone: str | None = None
    tenant_id: str | None = None


@dataclass
class ProducerStats:
    submitted: int = 0
    acknowledged: int = 0
    deduplicated: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def validate_params(task_type: TaskType | str, params: Mapping[str, Any] | Any) -> Any:
    """Return the validated params model; raise TaskValidationError naming each bad field."""
    if not isinstance(task_type, TaskType):
        try:
            task_type = TaskType.parse(task_type)
        except ValueError as exc:
            raise TaskValidationError(str(task_type), [("task_type", str(exc))]) from None
    model = PARAMS_MODELS[task_type]
    if isinstance(params, model):
        return params
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "(task)", err["msg"]) for err in exc.errors()
        ]
        raise TaskValidationError(task_type.value, problems) from None


class TaskProducer:
    """One per process; not thread-safe (confluent-kafka's producer is, this bookkeeping isn't)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        codec: EventCodec | None = None,
        source: str = "producer",
        origin: Origin = Origin(),
        dedupe_capacity: int = 100_000,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._codec = codec or EventCodec()
        self._source = source
        self._origin = origin
        self._dedupe_capacity = dedupe_capacity
        self._sent: OrderedDict[str, None] = OrderedDict()
        # Tasks the broker acknowledged whose PENDING/QUEUED are not produced yet. Delivery
        # reports only collect them: librdkafka aborts on a produce from inside a delivery
        # report served by flush(), so the statuses are produced right after each poll.
        self._acknowledged: list[tuple[TaskSubmitted, str]] = []
        self.stats = ProducerStats()
        self._producer = Producer(
            {**settings.client_config(), **_PRODUCER_DEFAULTS, **(producer_config or {})}
        )
        if self._codec.framing.value == "single-object":
            publish_schemas(self._producer, settings, [m.avro_name for m in all_event_models()])

    # -- public API ------------------------------------------------------------------------

    def submit(
        self,
        task_type: TaskType | str,
        params: Mapping[str, Any] | Any,
        *,
        idempotency_key: str | None = None,
        orchestration: Orchestration | None = None,
        webhook_url: str | None = None,
        origin: Origin | None = None,
        task_id: str | None = None,
        attempt: int = 1,
    ) -> str:
        """Validate and produce one task; return its id. Delivery is asynchronous: call
        :meth:`flush` to wait for the broker (it raises DeliveryError on failures)."""
        valid = validate_params(task_type, params)
        origin = origin or self._origin
        if task_id is None:
            task_id = (
                task_id_for(idempotency_key, origin.tenant_id) if idempotency_key else str(uuid.uuid4())
            )
        dedupe_key = f"{task_id}/{attempt}"
        if dedupe_key in self._sent:
            self._sent.move_to_end(dedupe_key)
            self.stats.deduplicated += 1
            return task_id
        model = TASK_SUBMITTED_MODELS[valid.task_type]
        event = model.model_construct(
            envelope=self._envelope(task_id, valid.task_type, attempt, origin),
            params=valid,
            idempotency_key=idempotency_key,
            orchestration=orchestration,
            webhook_url=webhook_url,
        )
        self._remember(dedupe_key)
        self._produce_task(event)
        return task_id

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every outstanding record; raise DeliveryError if any task was not delivered."""
        deadline = time.monotonic() + timeout_s
        remaining = self._producer.flush(timeout_s)
        while self._acknowledged and time.monotonic() < deadline:
            self._produce_statuses()
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        failures, self.stats.failures = self.stats.failures, []
        if remaining:
            failures.append(("(queue)", f"{remaining} record(s) still undelivered after {timeout_s}s"))
        if failures:
            raise DeliveryError(failures)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (also done by submit); returns how many were served."""
        served = self._producer.poll(timeout_s)
        if self._acknowledged:
            self._produce_statuses()
        return served

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)

    def __enter__(self) -> "TaskProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _envelope(self, task_id: str, task_type: TaskType, attempt: int, origin: Origin) -> Envelope:
        # model_construct: every field is built here from validated values.
        return Envelope.model_construct(
            event_id=str(uuid.uuid4()),
            task_id=task_id,
            task_type=task_type,
            attempt=attempt,
            occurred_at=datetime.now(timezone.utc),
            source=self._source,
            origin_instance=origin.instance,
            origin_zone=origin.zone,
            origin_tenant_id=origin.tenant_id,
        )

    def _remember(self, key: str) -> None:
        self._sent[key] = None
        if len(self._sent) > self._dedupe_capacity:
            self._sent.popitem(last=False)

    def _produce_task(self, event: TaskSubmitted) -> None:
        traceparent = new_traceparent()
        self.stats.submitted += 1

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.stats.failed += 1
                self.stats.failures.append((event.envelope.task_id, err.str()))
                self._sent.pop(f"{event.envelope.task_id}/{event.envelope.attempt}", None)
                return
            self.stats.acknowledged += 1
            self._acknowledged.append((event, traceparent))

        produce_event(self._producer, self._topics.task(event.envelope.task_type), event,
                      codec=self._codec, traceparent=traceparent, on_delivery=delivered)
        self.poll(0)

    def _produce_statuses(self) -> None:
        acknowledged, self._acknowledged = self._acknowledged, []
        for event, traceparent in acknowledged:
            trace = trace_id_of(traceparent)
            for status in (TaskStatus.PENDING, TaskStatus.QUEUED):
                produce_event(self._producer, self._topics.status, self._status(event, status),
                              codec=self._codec, traceparent=new_traceparent(trace))

    def _status(self, task: TaskSubmitted, status: TaskStatus) -> StatusChanged:
        env = task.envelope
        envelope = env.model_copy(
            update={"event_id": str(uuid.uuid4()), "occurred_at": datetime.now(timezone.utc)}
        )
        generation_id = task.orchestration.generation_id if task.orchestration else None
        return StatusChanged.model_construct(
            envelope=envelope,
            status=status,
            progress=None,
            message=None,
            result=None,
            error=None,
            worker_id=None,
            generation_id=generation_id,
        )
