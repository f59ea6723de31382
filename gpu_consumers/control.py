"""Cancellation: why a running task is being stopped, and who asked (the control topic).

Three reasons stop a running handler through its :class:`~gpu_consumers.handlers.base.CancelToken`,
and the runtime keeps them apart because they end differently:

* ``user``: a CancelRequested event on the control topic -> the task ends CANCELLED, outputs
  discarded;
* ``timeout``: the attempt ran past its time limit -> FAILED/PROVIDER_TIMEOUT (retryable);
* ``shutdown``: the worker is stopping -> no terminal status, offset not committed, so another
  worker of the group runs the task again.

:class:`ControlListener` reads the control topic in a background thread, without a consumer
group (every worker must see every cancel): all partitions from the beginning, then live.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from gpu_consumers.handlers.base import CancelToken
from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.events import CancelRequested
from schemas.headers import STATUS_WRITTEN_HEADER, header_dict
from schemas.kafka_settings import KafkaSettings

log = logging.getLogger("gpu_consumers.control")

# Poll timeout of the listener: how late a cancel may be noticed at worst, and how long stop()
# may wait for the thread.
_POLL_S = 0.1
_METADATA_TIMEOUT_S = 10.0
_RETRY_S = 2.0  # wait before reading the control topic again after an error
_MISSING_LOG_S = 60.0  # how often a worker waiting for a missing control topic says so again


class TopicMissing(RuntimeError):
    """The control topic does not exist (yet): the worker waits for it, no traceback."""


class CancelReason(StrEnum):
    USER = "user"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class ReasonToken(CancelToken):
    """A cancel token that remembers why it was set; the first reason wins."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.reason: CancelReason | None = None

    def cancel(self, reason: CancelReason = CancelReason.USER) -> None:  # type: ignore[override]
        with self._lock:
            if self.reason is None:
                self.reason = CancelReason(reason)
        super().cancel()


class CancelledIds:
    """A bounded, thread-safe set of cancelled task ids (the oldest is forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        with self._lock:
            self._ids[task_id] = None
            self._ids.move_to_end(task_id)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class ControlListener:
    """Reads CancelRequested events and calls ``on_cancel(task_id, status_written)`` for each (in
    its thread); ``status_written``: the canceller also wrote the task's CANCELLED.

    ``start()`` returns once the records present at start have been read (or after
    ``catch_up_timeout_s``), so a task cancelled while queued is known before any task is taken.
    An undecodable control record is logged and skipped: the DLQ is left to the processors, which
    read the control topic in a group (every worker would otherwise dead-letter it once).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        on_cancel: Callable[[str, bool], None],
        *,
        codec: EventCodec,
        client_id: str,
    ) -> None:
        self._kafka = kafka
        self._on_cancel = on_cancel
        self._codec = codec
        self._client_id = client_id
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0  # undecodable control records

    def start(self, catch_up_timeout_s: float = 10.0) -> bool:
        """Start the thread; True when it caught up with the topic within the timeout."""
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)
        self._thread.start()
        caught_up = self._caught_up.wait(catch_up_timeout_s)
        if not caught_up:
            log.warning("control topic not read up to its end within %.0fs; going on",
                        catch_up_timeout_s)
        return caught_up

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        missing_logged = float("-inf")
        while not self._stop.is_set():
            try:
                self._listen()
            except TopicMissing as exc:  # started before `computectl topics create`: wait
                if time.monotonic() - missing_logged >= _MISSING_LOG_S:
                    log.warning("%s (waiting for it)", exc)
                    missing_logged = time.monotonic()
                self._caught_up.set()  # nothing to catch up with: no cancel exists yet
                self._stop.wait(_RETRY_S)
            except Exception:  # e.g. the broker is away: log, wait, read the topic again
                log.exception("control listener failed; reconnecting in %gs", _RETRY_S)
                self._caught_up.set()  # do not hold up a starting worker any longer
                self._stop.wait(_RETRY_S)

    def _listen(self) -> None:
        topic = self._kafka.topics.control
        consumer = Consumer({
            **self._kafka.client_config(),
            # assign() only: librdkafka wants a group id, but this consumer never joins it.
            "group.id": f"compute-control-{uuid.uuid4().hex}",
            "client.id": self._client_id,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        try:
            ends = self._assign_all(consumer, topic)
            while not self._stop.is_set():
                msg = consumer.poll(_POLL_S)
                if msg is not None and not msg.error():
                    self._handle(msg.value(), msg.headers())
                    if ends.get(msg.partition(), 0) <= msg.offset() + 1:
                        ends.pop(msg.partition(), None)
                if not ends:
                    self._caught_up.set()
        finally:
            consumer.close()

    def _assign_all(self, consumer: Consumer, topic: str) -> dict[int, int]:
        """Assign every partition from the beginning; return the end offsets to catch up to."""
        deadline = time.monotonic() + _METADATA_TIMEOUT_S
        while True:
            meta = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            if time.monotonic() > deadline:
                raise TopicMissing(f"topic {topic} does not exist: run `computectl topics create`")
            time.sleep(0.2)
        ends = {}
        for p in meta.partitions:
            while True:  # a topic created a moment ago may not have a leader yet
                try:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=_METADATA_TIMEOUT_S)
                    break
                except KafkaException:
                    if time.monotonic() > deadline or self._stop.is_set():
                        raise
                    time.sleep(0.2)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        return ends

    def _handle(self, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        try:
            event = self._codec.decode(value or b"", expect=CancelRequested)
        except DecodeError as exc:
            self.skipped += 1
            log.warning("skipping an undecodable control record: %s", exc)
            return
        task_id = event.envelope.task_id
        log.info("cancel requested for task %s", task_id, extra={"task_id": task_id})
        # The API already wrote CANCELLED for a task that had not started (STATUS_WRITTEN_HEADER).
        self._on_cancel(task_id, STATUS_WRITTEN_HEADER in header_dict(headers))
