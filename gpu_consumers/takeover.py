"""Taking over a partition: has the previous owner finished its first records already?

A worker commits a record's offset only after the broker acknowledged the record's terminal
status. A worker that dies (SIGKILL, a crash, a lost session) between that acknowledgement and
its commit leaves a finished record uncommitted, and whoever takes the partition next would run
the task again: minutes of GPU time for a real model. So the first records a worker reads from a
partition it was just assigned are checked against the status topic: a record whose task already
has a *final* terminal status for the record's attempt or a later one (COMPLETED, CANCELLED, or a
FAILED that says no attempt follows) is committed without running. The check stops at the first
record that has not ended: the dead owner ran its records in order, so none after it has.

The status topic is keyed by task id; this reads only the partition the task id hashes to (the
producers' librdkafka default partitioner, ``consistent_random``: CRC-32 of the key modulo the
partition count), from the time the task record was written (at most ``lookback_s`` back) to the
end, matching keys before decoding anything. Nothing new is written for this: the status every
task ends with is the marker. A miss (a partition count changed, a lookback too short) only
means the task runs again, as it did before: at-least-once either way.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.errors import DecodeError
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings

log = logging.getLogger("gpu_consumers.worker")

_TIMEOUT_S = 5.0
_POLL_S = 0.2


def final_end(events: Iterable[StatusChanged], attempt: int) -> StatusChanged | None:
    """The status among ``events`` that ends the task for good at ``attempt`` or later, if any:
    COMPLETED, CANCELLED, or FAILED with no attempt following (``error.retryable`` False)."""
    for event in events:
        if event.envelope.attempt < attempt:
            continue
        if event.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED):
            return event
        if event.status is TaskStatus.FAILED and (event.error is None or not event.error.retryable):
            return event
    return None


def status_partition(task_id: str, partitions: int) -> int:
    """The status-topic partition librdkafka's default partitioner gives key ``task_id``."""
    return zlib.crc32(task_id.encode()) % partitions


class StatusLookup:
    """Reads a task's statuses back from the status topic (one reader consumer, no group)."""

    def __init__(self, kafka: KafkaSettings, codec: EventCodec, *, lookback_s: float,
                 scan_max: int, client_id: str) -> None:
        self._topic = kafka.topics.status
        self._codec = codec
        self._lookback_s = lookback_s
        self._scan_max = scan_max
        self._consumer = Consumer({
            **kafka.client_config(),
            "group.id": f"compute-takeover-{uuid.uuid4().hex}",  # assign() only, never joins
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })
        self._partitions: int | None = None

    def ended(self, task_id: str, attempt: int, written_ms: int) -> StatusChanged | None:
        """The final terminal status of ``task_id`` at ``attempt`` or later written since
        ``written_ms`` (the task record's timestamp), or None (also when the topic could not be
        read: the task then runs, as at-least-once allows)."""
        try:
            return self._scan(task_id, attempt, written_ms)
        except (KafkaException, DecodeError) as exc:
            log.warning("task %s: could not read the status topic to see whether it ended (%s); "
                        "running it", task_id, exc, extra={"task_id": task_id})
            return None

    def _scan(self, task_id: str, attempt: int, written_ms: int) -> StatusChanged | None:
        consumer = self._consumer
        if self._partitions is None:
            meta = consumer.list_topics(self._topic, timeout=_TIMEOUT_S).topics.get(self._topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return None
            self._partitions = len(meta.partitions)
        partition = status_partition(task_id, self._partitions)
        since_ms = max(written_ms, int((time.time() - self._lookback_s) * 1000))
        start = consumer.offsets_for_times([TopicPartition(self._topic, partition, since_ms)],
                                           timeout=_TIMEOUT_S)[0].offset
        _, high = consumer.get_watermark_offsets(TopicPartition(self._topic, partition),
                                                 timeout=_TIMEOUT_S)
        if start < 0 or start >= high:  # nothing written since the task record
            return None
        high = min(high, start + self._scan_max)
        consumer.assign([TopicPartition(self._topic, partition, start)])
        key = task_id.encode()
        mine = []
        deadline = time.monotonic() + _TIMEOUT_S
        try:
            position = start
            while position < high and time.monotonic() < deadline:
                msg = consumer.poll(_POLL_S)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise KafkaException(msg.error())
                position = msg.offset() + 1
                if msg.key() == key:
                    mine.append(self._codec.decode(msg.value() or b"", expect=StatusChanged))
        finally:
            consumer.unassign()
        return final_end(mine, attempt)

    def close(self) -> None:
        self._consumer.close()
