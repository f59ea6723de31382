"""Taking over a partition: has the previous owner finished its first records already?

A worker commits a record's offset only after the broker acknowledged the record's terminal
status. A worker that dies (SIGKILL, a crash, a lost session) between that acknowledgement and
its commit leaves a finished record uncommitted, and whoever takes the partition next would run
the task again: minutes of GPU time for a real model. So the first records a worker reads from a
partition it was just assigned are checked against the status topic: a record whose task already
has a terminal status for the record's attempt or a later one (COMPLETED, FAILED, CANCELLED: all
final), or any status of a later attempt (a retry someone else holds), is committed without
running. The check stops at the first
record that has not ended: the dead owner ran its records in order, so none after it has.

The status topic is keyed by task id; this reads only the partition the task id hashes to (the
partitioner every writer uses, murmur2 like the Java client: ``schemas/partitioning.py``),
from the time the task record was written (at most ``lookback_s`` back) to the task's first
final status or the end, matching keys before decoding anything. Nothing new is written for this: the status every task ends
with is the marker. A miss (a partition count changed, a lookback too short) only
means the task runs again, as it did before: at-least-once either way.

A check that cannot read the topic is no answer (:class:`Answer` ``UNKNOWN``), never "not ended":
after a broker freeze the reader failed with FENCED_LEADER_EPOCH, the worker ran the task, and a
finished task ran again (the fault suite, issue 15). The reader keeps the stale leader epoch, so
a failed read is retried at once with a fresh reader (``fresh_retries`` times); if it still
cannot tell, the worker waits (:func:`step_for` ``WAIT``, partitions paused, checks spaced by
:func:`recheck_delay`) until the broker answers. A read that works costs nothing more.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas.codec import EventCodec
from schemas.enums import TERMINAL_STATUSES
from schemas.errors import ComputeError, DecodeError
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings
from schemas.partitioning import key_partition

log = logging.getLogger("gpu_consumers.worker")

_TIMEOUT_S = 5.0
_POLL_S = 0.2
# A failed read is retried at once with a fresh reader this many times before the check answers
# UNKNOWN (one cleared the stale leader epoch in every case seen).
FRESH_RETRIES = 2
# Spacing of the checks while the topic stays unreadable: a broker that is down for minutes is
# asked every RECHECK_MAX_S, not in a loop.
RECHECK_FIRST_S = 0.5
RECHECK_MAX_S = 10.0


class StatusUnreadable(ComputeError):
    """The status topic did not answer fully (no metadata, a partition error, a scan that ran
    out of time): whether the task ended is unknown."""


class Answer(Enum):
    ENDED = "ended"  # a final status is on the topic: commit the record without running it
    NOT_ENDED = "not-ended"  # the topic was read to its end and holds none: run it
    UNKNOWN = "unknown"  # the topic could not be read


class Step(Enum):
    SKIP = "skip"  # commit without running
    RUN = "run"
    WAIT = "wait"  # keep the partition paused and check again later


@dataclass(frozen=True)
class Check:
    answer: Answer
    ended: StatusChanged | None = None  # the final status, for ENDED
    error: str | None = None  # why, for UNKNOWN


def step_for(check: Check) -> Step:
    """What the worker does with a taken-over record: only a read that found no final status
    runs it; a check that could not read waits, because running it is the failure to avoid."""
    return {Answer.ENDED: Step.SKIP, Answer.NOT_ENDED: Step.RUN,
            Answer.UNKNOWN: Step.WAIT}[check.answer]


def recheck_delay(failed_checks: int, *, first_s: float = RECHECK_FIRST_S,
                  max_s: float = RECHECK_MAX_S) -> float:
    """Seconds to wait after ``failed_checks`` (1, 2, ...) checks in a row answered UNKNOWN:
    doubling from ``first_s``, at most ``max_s``."""
    return min(max_s, first_s * 2 ** max(0, failed_checks - 1))


def final_end(events: Iterable[StatusChanged], attempt: int) -> StatusChanged | None:
    """The status among ``events`` that ends the record of ``attempt``, if any: a terminal
    (COMPLETED, FAILED, CANCELLED: all final) of ``attempt`` or later, or any status of a later
    attempt -- the record's attempt was retried (QUEUED ``attempt + 1``), and whoever holds that
    retry runs it (the worker that waited, a hand-back's record, or the processors' lease timer
    when that worker is gone); running the old attempt would only write statuses the fold
    ignores."""
    for event in events:
        if event.envelope.attempt < attempt:
            continue
        if event.envelope.attempt > attempt or event.status in TERMINAL_STATUSES:
            return event
    return None


def status_partition(task_id: str, partitions: int) -> int:
    """The status-topic partition every writer's partitioner (murmur2) gives key ``task_id``."""
    return key_partition(task_id.encode(), partitions)


class StatusLookup:
    """Reads a task's statuses back from the status topic (one reader consumer, no group)."""

    def __init__(self, kafka: KafkaSettings, codec: EventCodec, *, lookback_s: float,
                 scan_max: int, client_id: str, fresh_retries: int = FRESH_RETRIES) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._topic = kafka.topics.status
        self._codec = codec
        self._lookback_s = lookback_s
        self._scan_max = scan_max
        self._fresh_retries = fresh_retries
        self._consumer = self._new_reader()
        self._partitions: int | None = None

    def _new_reader(self) -> Consumer:
        return Consumer({
            **self._kafka.client_config(),
            "group.id": f"compute-takeover-{uuid.uuid4().hex}",  # assign() only, never joins
            "client.id": self._client_id,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })

    def check(self, task_id: str, attempt: int, written_ms: int) -> Check:
        """Whether ``task_id`` has a final terminal status at ``attempt`` or later written since
        ``written_ms`` (the task record's timestamp). A failed read is retried with a fresh
        reader, at most ``fresh_retries`` times; then the answer is UNKNOWN."""
        error = ""
        for _ in range(1 + self._fresh_retries):
            try:
                ended = self._scan(task_id, attempt, written_ms)
            except (KafkaException, StatusUnreadable) as exc:
                error = str(exc)
                log.warning("task %s: could not read the status topic to see whether it ended "
                            "(%s); asking again with a fresh reader", task_id, exc,
                            extra={"task_id": task_id})
                self._renew()
                continue
            return Check(Answer.ENDED, ended) if ended is not None else Check(Answer.NOT_ENDED)
        return Check(Answer.UNKNOWN, error=error)

    def _renew(self) -> None:
        """A new reader: the old one may hold a stale leader epoch (FENCED_LEADER_EPOCH after a
        broker freeze) that it never drops."""
        old, self._consumer = self._consumer, self._new_reader()
        self._partitions = None
        try:
            old.close()
        except (KafkaException, RuntimeError) as exc:
            log.info("closing the old takeover reader failed: %s", exc)

    def _scan(self, task_id: str, attempt: int, written_ms: int) -> StatusChanged | None:
        consumer = self._consumer
        if self._partitions is None:
            meta = consumer.list_topics(self._topic, timeout=_TIMEOUT_S).topics.get(self._topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise StatusUnreadable(f"no metadata for {self._topic}: "
                                       f"{meta.error if meta is not None else 'missing'}")
            self._partitions = len(meta.partitions)
        partition = status_partition(task_id, self._partitions)
        since_ms = max(written_ms, int((time.time() - self._lookback_s) * 1000))
        found = consumer.offsets_for_times([TopicPartition(self._topic, partition, since_ms)],
                                           timeout=_TIMEOUT_S)[0]
        if found.error is not None:
            raise StatusUnreadable(f"offset lookup on {self._topic}[{partition}]: {found.error}")
        start = found.offset
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
                        position = high  # read to the end
                        break
                    raise KafkaException(msg.error())
                position = msg.offset() + 1
                if msg.key() == key:
                    try:
                        mine.append(self._codec.decode(msg.value() or b"", expect=StatusChanged))
                    except DecodeError as exc:  # says nothing about the task: the rest decides
                        log.warning("task %s: an undecodable status at %s[%d]@%d (%s)", task_id,
                                    self._topic, partition, msg.offset(), exc)
                        continue
                    if final_end(mine[-1:], attempt) is not None:
                        break  # the first final status is the answer: the rest cannot change it
        finally:
            consumer.unassign()
        if position < high and final_end(mine, attempt) is None:
            # Ran out of time before the end: a status not yet read may be the final one.
            raise StatusUnreadable(f"{self._topic}[{partition}] read to {position} of {high} "
                                   f"in {_TIMEOUT_S:.0f} s")
        return final_end(mine, attempt)

    def close(self) -> None:
        self._consumer.close()
