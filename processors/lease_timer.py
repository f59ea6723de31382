"""The lease timer's I/O: read how far the fold has got, emit what :mod:`processors.leases` says.

Runs every ``lease_check_interval_s`` inside the Faust app (``app.timer``). Blocking Kafka calls
(offset look-ups, produce + flush) run in a thread so the agents keep folding meanwhile. Outputs
go through ``schemas.emit.produce_event`` (plus the worker-stops header on a resubmitted task) on
a confluent-kafka producer, like every other status and task record, so they carry the same
headers and land on the same partition as the task's other records (murmur2, every writer's
partitioner: ``schemas/partitioning.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from processors.leases import (
    LeaseAction,
    LeaseBook,
    Retry,
    TimeOut,
    lost_record_event,
    retry_events,
    timeout_event,
)
from processors.settings import ProcessorSettings
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.errors import ComputeError
from schemas.events import StatusChanged, TaskSubmitted
from schemas.kafka_settings import KafkaSettings
from state.stops import STOPS_HEADER

log = logging.getLogger("processors.leases")

_KAFKA_TIMEOUT_S = 10.0
# Idempotent producer: a lease output is written once even when librdkafka retries it.
_PRODUCER = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}


class LeaseTimer:
    def __init__(self, app: Any, kafka: KafkaSettings, settings: ProcessorSettings,
                 book: LeaseBook, *, codec: EventCodec, status_topic: str,
                 submission: Callable[[str], bytes | None]) -> None:
        self._app = app
        self._kafka = kafka
        self._group = settings.app_id_for(kafka.topic_prefix)
        self._book = book
        self._codec = codec
        self._status_topic = status_topic
        self._submission = submission
        self._producer: Producer | None = None
        self._offsets: Consumer | None = None
        self.timeouts = 0  # counters, for logs and tests
        self.retries = 0
        # Who writes this timer's status events (their origin_instance / origin_zone, issue 17):
        # this processor, named by its static member id when it has one.
        self.instance = settings.group_instance_id or f"processors/{socket.gethostname()}-{os.getpid()}"
        self._zone = settings.origin_zone

    # ---- the timer -------------------------------------------------------------------------

    async def check(self) -> None:
        app = self._app
        if app.rebalancing or app.in_recovery:
            return  # the table is incomplete: judge nothing
        partitions = sorted(tp.partition for tp in app.consumer.assignment()
                            if tp.topic == self._status_topic)
        self._book.keep_partitions(partitions)
        if not partitions or not len(self._book):
            return
        at = datetime.now(UTC)
        try:
            ends, committed = await asyncio.to_thread(self._read_offsets, partitions)
        except KafkaException as exc:
            log.warning("lease check skipped: cannot read offsets: %s", exc)
            return
        self._book.note_end_offsets(at, ends)
        actions = self._book.due(self._book.fresh_as_of(committed))
        if not actions:
            return
        outputs = [(action, self._outputs(action)) for action in actions]
        sent = [(a, out) for a, out in outputs if out]
        try:
            await asyncio.to_thread(self._produce, [rec for _, out in sent for rec in out])
        except KafkaException as exc:
            log.warning("lease outputs not acknowledged; repeated at the next check: %s", exc)
            return
        done_at = datetime.now(UTC)
        for action, _ in sent:
            self._book.sent(action, done_at)

    async def on_shutdown(self, app: Any = None, **_: Any) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(_KAFKA_TIMEOUT_S)
            self._producer = None
        if self._offsets is not None:
            self._offsets.close()
            self._offsets = None

    # ---- helpers ---------------------------------------------------------------------------

    def _outputs(self, action: LeaseAction) -> list[tuple[str, Any, int | None]]:
        """(topic, event, worker stops) for ``action``; empty when it cannot be carried out. The
        resubmitted task record carries the task's worker stops so far (``STOPS_HEADER``): the
        worker that runs it applies the poison rule to its own hard stop."""
        state = action.state
        if isinstance(action, TimeOut):
            self.timeouts += 1
            log.info("task %s attempt %d: lease of %gs ran out; PROVIDER_TIMEOUT (%s)",
                     state.task_id, state.attempt, action.lease_s, action.decision.reason)
            return [(self._status_topic, self._written_here(timeout_event(action),
                                                            self._decoded(state.task_id)), None)]
        assert isinstance(action, Retry)
        raw = self._submission(state.task_id)
        try:
            submitted = self._codec.decode(raw, expect=None) if raw else None
        except ComputeError as exc:
            log.error("task %s: its task record cannot be read (%s); not retried", state.task_id, exc)
            submitted = None
        if not isinstance(submitted, TaskSubmitted):
            log.error("task %s: no task record to start attempt %d from; it ends FAILED",
                      state.task_id, state.attempt)
            self._book.forget(state.task_id)
            return [(self._status_topic, self._written_here(lost_record_event(action), None), None)]
        record, queued = retry_events(action, submitted)
        self.retries += 1
        log.info("task %s: attempt %d resubmitted (%s)", state.task_id,
                 record.envelope.attempt, action.decision.reason)
        return [(self._kafka.topics.task(record.envelope.task_type), record, action.stops),
                (self._status_topic, self._written_here(queued, submitted), None)]

    def _written_here(self, event: StatusChanged, submitted: TaskSubmitted | None) -> StatusChanged:
        """``event`` naming this processor as its writer, with the task's tenant, origin version
        and entity id when its task record is at hand (the folded state does not hold them)."""
        update: dict[str, Any] = {"origin_instance": self.instance, "origin_zone": self._zone}
        if submitted is not None:
            env = submitted.envelope
            update.update(origin_tenant_id=env.origin_tenant_id, origin_version=env.origin_version,
                          entity_id=env.entity_id)
        return event.model_copy(update={"envelope": event.envelope.model_copy(update=update)})

    def _decoded(self, task_id: str) -> TaskSubmitted | None:
        """The task's record from the submissions table, if it is there and readable."""
        raw = self._submission(task_id)
        try:
            event = self._codec.decode(raw, expect=None) if raw else None
        except ComputeError:
            return None
        return event if isinstance(event, TaskSubmitted) else None

    def _read_offsets(self, partitions: Iterable[int]) -> tuple[dict[int, int], dict[int, int | None]]:
        """End offsets first, then committed ones (the order :meth:`LeaseBook.fresh_as_of`
        relies on)."""
        if self._offsets is None:
            self._offsets = Consumer({**self._kafka.client_config(), "group.id": self._group,
                                      "enable.auto.commit": False,
                                      "client.id": f"{self._group}-leases-{uuid.uuid4().hex[:6]}"})
        tps = [TopicPartition(self._status_topic, p) for p in partitions]
        ends = {tp.partition: self._offsets.get_watermark_offsets(tp, timeout=_KAFKA_TIMEOUT_S)[1]
                for tp in tps}
        committed = {tp.partition: (tp.offset if tp.offset >= 0 else None)
                     for tp in self._offsets.committed(tps, timeout=_KAFKA_TIMEOUT_S)}
        return ends, committed

    def _produce(self, records: list[tuple[str, Any, int | None]]) -> None:
        if self._producer is None:
            self._producer = Producer({**self._kafka.producer_config(), **_PRODUCER})
        errors: list[Any] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        for topic, event, stops in records:
            extra = [(STOPS_HEADER, str(stops).encode())] if stops is not None else []
            produce_event(self._producer, topic, event, codec=self._codec,
                          on_delivery=on_delivery, extra_headers=extra)
        left = self._producer.flush(_KAFKA_TIMEOUT_S)
        if left or errors:
            raise KafkaException(f"lease outputs not acknowledged: {left} pending, errors {errors}")
