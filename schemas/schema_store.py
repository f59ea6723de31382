"""A schema store on Kafka itself, for single-object framing without a registry.

Every writer publishes the schemas it writes to the compacted ``<prefix>.schemas`` topic, keyed
by fingerprint. A reader that meets a fingerprint it does not know (a record from a newer
writer) reads that topic once and resolves the record against its own schema by Avro's rules.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

from confluent_kafka import Consumer, Producer, TopicPartition

from schemas import avro_files
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import watermarks

# Reading the whole compacted topic is small (one record per schema version) and rare (only on
# an unknown fingerprint); bound it so a broken broker cannot hang a consumer.
_READ_TIMEOUT_S = 10.0


def publish_schema(producer: Producer, settings: KafkaSettings, schema: dict[str, Any]) -> bytes:
    """Produce one schema keyed by its fingerprint (idempotent: same key, same value)."""
    fp = avro_files.fingerprint(avro_files.parse(schema))
    producer.produce(
        settings.topics.schemas, key=fp.hex().encode(), value=avro_files.canonical_text(schema)
    )
    return fp


def publish_schemas(producer: Producer, settings: KafkaSettings, avro_names: list[str]) -> None:
    for name in avro_names:
        publish_schema(producer, settings, avro_files.schema_json(name))


class SchemaStoreReader:
    """Callable ``fingerprint -> schema | None`` for :class:`schemas.codec.EventCodec`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._known: dict[bytes, dict[str, Any]] = {}

    def __call__(self, fp: bytes) -> dict[str, Any] | None:
        if fp not in self._known:
            self._known.update(self._read_all())
        return self._known.get(fp)

    def _read_all(self) -> dict[bytes, dict[str, Any]]:
        topic = self._settings.topics.schemas
        consumer = Consumer(
            {
                **self._settings.client_config(),
                "group.id": "compute-schema-store-reader",  # never commits: assign() only
                "enable.auto.commit": False,
            }
        )
        found: dict[bytes, dict[str, Any]] = {}
        try:
            meta = consumer.list_topics(topic, timeout=_READ_TIMEOUT_S).topics.get(topic)
            if meta is None or meta.error is not None:
                return found
            ends: dict[int, int] = {}
            for p in meta.partitions:
                low, high = watermarks(consumer, TopicPartition(topic, p), _READ_TIMEOUT_S)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            deadline = time.monotonic() + _READ_TIMEOUT_S
            while ends and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                key, value, offset, partition = msg.key(), msg.value(), msg.offset(), msg.partition()
                if value:
                    found[bytes.fromhex(cast(bytes, key).decode())] = json.loads(value)
                if cast(int, offset) + 1 >= ends.get(cast(int, partition), 0):
                    ends.pop(cast(int, partition), None)
        finally:
            consumer.close()
        return found
