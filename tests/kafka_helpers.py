"""Reading topics back in tests: independent consumers, conditions with deadlines."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import watermarks


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
