"""What the API writes to Kafka: task submissions (through the TaskProducer), cancels, and
generation requests and cancels (GenerationRequested / GenerationCancelRequested records on the
generations topic).

Blocking calls: the routes run them in a worker thread. A submission is acknowledged by the
broker before the API answers 202, and submissions never wait for one another: producing one takes
the producer's lock for microseconds (``TaskProducer``'s bookkeeping is not thread-safe), then
each waits for its own delivery report, served by the gateway's reporter thread, with its own
deadline. (Before, each submit held one lock while it flushed: during a broker outage every submit
queued behind the previous one's 10 s wait, and clients saw 30 s timeouts and a 60 s submit; issue
15, item 6.) A task not acknowledged by its deadline is answered 503 but stays in librdkafka's
queue (its statuses must not be dropped on a short ``message.timeout.ms``): a retry with the same
Idempotency-Key names the same task and waits for that record's report, with its own deadline.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from generations.plan import GenerationCancelRequested, GenerationRequested
from producers.errors import DeliveryError, TaskTooLargeError
from producers.submit import LINGER_MS, Origin, TaskProducer
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import TaskStatus, TaskType
from schemas.events import CancelRequested, Envelope, StatusChanged
from schemas.headers import STATUS_WRITTEN_HEADER, Headers
from schemas.kafka_settings import KafkaSettings

SOURCE = "api"
# How long the reporter thread waits for delivery reports per turn (also how soon close() ends it).
_REPORT_POLL_S = 0.1


class _Delivery:
    """One task record's delivery report, waited for by the request threads that submitted it
    (the first, and any repeat of it while it is in flight)."""

    __slots__ = ("done", "error", "task_id", "_forget")

    def __init__(self, forget: Callable[[_Delivery], None]) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None
        self.task_id: str | None = None  # set under the gateway's lock, before _forget can run
        self._forget = forget

    def __call__(self, err: KafkaError | None) -> None:  # from the reporter thread
        self.error = err
        self.done.set()
        self._forget(self)


class TaskGateway:
    def __init__(self, kafka: KafkaSettings, *, codec: EventCodec | None = None,
                 origin_instance: str | None = None, origin_zone: str | None = None,
                 ack_timeout_s: float = 10.0) -> None:
        self.kafka = kafka
        self._codec = codec or EventCodec()
        self._origin = Origin(instance=origin_instance, zone=origin_zone)
        self._ack_timeout_s = ack_timeout_s
        # Held only while a task is produced, never while waiting. Reentrant: a full librdkafka
        # queue makes submit serve reports itself, whose callbacks take it again.
        self._lock = threading.RLock()
        self._tasks = TaskProducer(kafka, codec=self._codec, source=SOURCE, origin=self._origin,
                                   serve_reports=False)
        self._pending: dict[str, _Delivery] = {}  # task id -> its report, until it comes
        self._closing = threading.Event()
        self._reporter = threading.Thread(target=self._serve_reports, name="submit-reports",
                                          daemon=True)
        self._reporter.start()
        # The API waits for each acknowledgement, so batching would only add latency: the task
        # producer's linger (a fraction of a millisecond, so events produced together travel
        # together).
        self._events = Producer({**kafka.producer_config(), "enable.idempotence": True,
                                 "linger.ms": LINGER_MS})
        self._admin = AdminClient(kafka.client_config())

    def task_id_for(self, idempotency_key: str, tenant_id: str) -> str:
        """The id a task of ``tenant_id`` submitted with ``idempotency_key`` has (keyed with the
        deployment's ``IDEMPOTENCY_SECRET``: producers/task_ids.py)."""
        return self._tasks.task_id_for(idempotency_key, tenant_id)

    @property
    def idempotency_secret(self) -> bytes | None:
        return self._tasks.idempotency_secret

    def submit(self, task_type: TaskType, params: Any, *, tenant_id: str,
               idempotency_key: str | None, webhook_url: str | None,
               entity_id: str | None = None, origin_version: str | None = None) -> tuple[str, bool]:
        """Produce the task and its PENDING/QUEUED; return its id once the broker has the task, and
        whether it was a repeat this process had already sent (nothing produced then).
        Raises DeliveryError when the broker did not acknowledge in time, TaskTooLargeError when
        the producer or the broker refused the record as too large (nothing queued then).
        ``entity_id`` and ``origin_version`` are the caller's (the origin's instance and zone
        stay this deployment's: they route webhooks, a caller must not pick another's)."""
        origin = Origin(self._origin.instance, self._origin.zone, tenant_id, origin_version)
        delivery = _Delivery(self._forget)
        with self._lock:
            repeats = self._tasks.stats.deduplicated
            task_id = self._tasks.submit(task_type, params, idempotency_key=idempotency_key,
                                         webhook_url=webhook_url, origin=origin,
                                         on_result=delivery, entity_id=entity_id)
            repeat = self._tasks.stats.deduplicated > repeats
            if repeat:  # sent before: answer with the first one's report (None: it came already)
                delivery = self._pending.get(task_id)  # type: ignore[assignment]
            else:
                delivery.task_id = task_id
                self._pending[task_id] = delivery
        # Answered once the task record is acknowledged: its PENDING/QUEUED are produced then by
        # the reporter thread but not waited for (the task is safe; they follow in milliseconds).
        if delivery is not None:
            self._wait(task_id, task_type, delivery)
        return task_id, repeat

    def _forget(self, delivery: _Delivery) -> None:
        """The record was reported: a later repeat of its task needs no wait."""
        with self._lock:
            if delivery.task_id is not None and self._pending.get(delivery.task_id) is delivery:
                del self._pending[delivery.task_id]

    def _wait(self, task_id: str, task_type: TaskType, delivery: _Delivery) -> None:
        acked = delivery.done.wait(self._ack_timeout_s)
        if not acked:
            raise DeliveryError([(task_id, f"not acknowledged within {self._ack_timeout_s:g}s")])
        err = delivery.error
        if err is None:
            return
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # the topic's max.message.bytes
            raise TaskTooLargeError(f"the {task_type.value} task's record", None, None)
        raise DeliveryError([(task_id, err.str())])

    def _serve_reports(self) -> None:
        """The one thread that serves the task producer's delivery reports (and produces each
        acknowledged task's PENDING/QUEUED), so no submit waits on another's flush."""
        while not self._closing.is_set():
            try:
                self._tasks.poll(_REPORT_POLL_S)
            except Exception:  # a bug in a report callback must not end delivery for everyone
                logging.getLogger("api").exception("serving delivery reports")

    def cancel(self, row: dict[str, Any], *, requested_by: str, reason: str | None) -> None:
        """Ask for the task in ``row`` to be cancelled (control topic); a task that has not
        started yet is also marked CANCELLED on the status topic right away. Their origin instance
        and zone are this API's (who wrote them, issue 17); tenant, version and entity the task's."""
        def envelope() -> Envelope:
            return Envelope(event_id=str(uuid.uuid4()), task_id=str(row["task_id"]),
                            task_type=TaskType(row["task_type"]), attempt=row["attempt"],
                            occurred_at=datetime.now(UTC), source=SOURCE,
                            origin_instance=self._origin.instance, origin_zone=self._origin.zone,
                            origin_tenant_id=row.get("origin_tenant_id"),
                            origin_version=row.get("origin_version"), entity_id=row.get("entity_id"))

        not_started = row["status"] in (TaskStatus.PENDING.value, TaskStatus.QUEUED.value)
        marker = ([(STATUS_WRITTEN_HEADER, TaskStatus.CANCELLED.value.encode())] if not_started
                  else [])
        events: list[tuple[str, Any, Headers]] = [(self.kafka.topics.control, CancelRequested(
            envelope=envelope(), reason=reason, requested_by=requested_by), marker)]
        if not_started:  # ended here, also if no worker ever reaches the record
            events.append((self.kafka.topics.status, StatusChanged(
                envelope=envelope(), status=TaskStatus.CANCELLED,
                message=f"cancelled before it started ({requested_by})"), []))
        self._produce_all(events)

    def submit_generation(self, requested: GenerationRequested) -> None:
        """Produce the GenerationRequested record to the generations topic (keyed by generation
        id) and return once the broker has it; DeliveryError when it did not acknowledge in time."""
        self._produce_generation_record(requested)

    def cancel_generation(self, requested: GenerationCancelRequested) -> None:
        """Produce the GenerationCancelRequested record to the generations topic (keyed by
        generation id; the processors cancel it) and return once the broker has it; DeliveryError
        when it did not acknowledge in time."""
        self._produce_generation_record(requested)

    def _produce_generation_record(self, record: GenerationRequested | GenerationCancelRequested) -> None:
        key, value, headers = record.to_record()
        failures: list[tuple[str, str]] = []
        too_large: list[bool] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append((msg.topic() or "?", err.str()))
                too_large.append(err.code() == KafkaError.MSG_SIZE_TOO_LARGE)

        try:
            self._events.produce(self.kafka.topics.generations, key=key, value=value,
                                 headers=headers, on_delivery=delivered)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            too_large.append(True)
        else:
            remaining = self._events.flush(self._ack_timeout_s)
            if remaining:
                failures.append(("(queue)", f"{remaining} record(s) undelivered"))
        if any(too_large):
            raise TaskTooLargeError("the generation request's record", len(value), None)
        if failures:
            raise DeliveryError(failures)

    def _produce_all(self, events: list[tuple[str, Any, Headers]]) -> None:
        """Produce each (topic, event, extra headers) and wait for the broker's acknowledgements."""
        failures: list[tuple[str, str]] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append((msg.topic() or "?", err.str()))

        for topic, event, extra in events:
            produce_event(self._events, topic, event, codec=self._codec, on_delivery=delivered,
                          extra_headers=extra)
        remaining = self._events.flush(self._ack_timeout_s)
        if remaining:
            failures.append(("(queue)", f"{remaining} record(s) undelivered"))
        if failures:
            raise DeliveryError(failures)

    def ping(self, timeout_s: float) -> str | None:
        """None when the cluster answers a metadata request in time, else why not."""
        try:
            meta = self._admin.list_topics(timeout=timeout_s)
        except Exception as exc:  # KafkaException, or a timeout
            return f"Kafka: {exc}"
        return None if meta.brokers else "Kafka: no broker in the metadata"

    def close(self) -> None:
        self._closing.set()
        self._reporter.join(timeout=_REPORT_POLL_S * 10)
        with self._lock:
            try:
                self._tasks.close(self._ack_timeout_s)
            except DeliveryError:
                pass  # shutting down: what could not be delivered was already answered 503
        self._events.flush(self._ack_timeout_s)
