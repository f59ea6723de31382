"""Reading topics back in tests: independent consumers, conditions with deadlines."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.codec import EventCodec
from schemas.enums import TaskStatus
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import watermarks
from state.lifecycle import TaskState, fold_all

DEADLINE_S = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S,
             also: Callable[[], None] = lambda: None) -> None:
    """Poll ``condition`` until it holds; ``also`` runs each turn (it may raise, e.g. when a
    process the test needs has died)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        also()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.02)


def read_topic(settings: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 30.0) -> list:
    """Read ``topic`` from the beginning with an independent consumer until ``expect`` records
    arrived. It does not wait for more: callers assert exact counts with :func:`record_count`."""
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        records = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expect:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: {len(records)} of {expect} records within {timeout_s}s")
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                records.append(msg)
        return records
    finally:
        consumer.close()


def record_count(settings: KafkaSettings, topic: str) -> int:
    """How many records a topic holds now (sum of high watermarks; our topics start at 0)."""
    consumer = Consumer({**settings.client_config(), "group.id": f"test-count-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(watermarks(consumer, TopicPartition(topic, p))[1] for p in meta.partitions)
    finally:
        consumer.close()


def committed_total(settings: KafkaSettings, topic: str, group: str) -> int:
    """Sum of ``group``'s committed offsets on ``topic`` (0 for partitions it never committed)."""
    consumer = Consumer({**settings.client_config(), "group.id": group})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(tp.offset for tp in offsets if tp.offset >= 0)
    finally:
        consumer.close()


class StatusLog:
    """The status topic from its beginning, decoded and grouped by task id. Waits default to
    ``deadline_s``."""

    def __init__(self, settings: KafkaSettings, deadline_s: float = DEADLINE_S) -> None:
        topic = settings.topics.status
        self._codec = EventCodec()
        self._deadline_s = deadline_s
        self._consumer = Consumer({**settings.client_config(), "group.id": f"reader-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False})
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.events: dict[str, list[StatusChanged]] = defaultdict(list)

    def drain(self) -> None:
        while (msg := self._consumer.poll(0.05)) is not None:
            if not msg.error():
                event = self._codec.decode(msg.value(), expect=StatusChanged)
                self.events[event.envelope.task_id].append(event)

    def state(self, task_id: str) -> TaskState | None:
        return fold_all(self.events[task_id])

    def wait(self, condition: Callable[[StatusLog], bool], what: str, timeout_s: float | None = None,
             also: Callable[[], None] = lambda: None) -> None:
        wait_for(lambda: self.drain() or condition(self), what, timeout_s or self._deadline_s, also)

    def wait_terminal(self, *task_ids: str, also: Callable[[], None] = lambda: None) -> None:
        def done(log: StatusLog) -> bool:
            return all((s := log.state(t)) is not None and s.is_terminal for t in task_ids)

        self.wait(done, f"terminal statuses of {len(task_ids)} task(s)", also=also)

    def wait_running(self, task_id: str, also: Callable[[], None] = lambda: None) -> None:
        """Until a PROCESSING event with progress > 0: the task's handler is under way."""
        self.wait(lambda log: any(e.status is TaskStatus.PROCESSING and (e.progress or 0) > 0
                                  for e in log.events[task_id]),
                  f"task {task_id} to report progress", also=also)

    def terminals(self, task_id: str) -> list[StatusChanged]:
        return [e for e in self.events[task_id] if e.status.is_terminal]

    def terminals_per_attempt(self, task_id: str) -> Counter[int]:
        return Counter(e.envelope.attempt for e in self.terminals(task_id))

    def close(self) -> None:
        self._consumer.close()
