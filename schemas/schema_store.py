"""A schema store on Kafka itself, for single-object framing without a registry.

Every writer publishes the schemas it writes to the compacted ``<prefix>.schemas`` topic, keyed
by fingerprint. A reader that meets a fingerprint it does not know (a record from a newer
writer) reads that topic once and resolves the record against its own schema by Avro's rules.

The key is :func:`store_key`: the 8 fingerprint bytes *in the order the single-object header
carries them* (CRC-64-AVRO, little-endian) as 16 lower-case hex digits. So the key is the hex of
bytes 2..9 of any record written with that schema. In Java that is the hex of
``ByteBuffer.allocate(8).order(LITTLE_ENDIAN).putLong(SchemaNormalization.parsingFingerprint64(s))``,
not ``Long.toHexString(fingerprint)`` (which is big-endian). The value is the self-contained
schema's JSON text.

Who publishes at start-up (docs/SCHEMA_EVOLUTION.md): the submission client (``TaskProducer``,
so also the API gateway and the orchestrator), the workers and the processors, through
:func:`publish_event_schemas`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from confluent_kafka import Consumer, Producer, TopicPartition

from schemas import avro_files
from schemas.events import all_event_models
from schemas.framing import Framing
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import watermarks

log = logging.getLogger("schemas.schema_store")
# Publishing at start-up waits this long at most for the broker (a few ms when it is up).
_PUBLISH_TIMEOUT_S = 10.0

# Reading the whole compacted topic is small (one record per schema version) and rare (only on
# an unknown fingerprint); bound it so a broken broker cannot hang a consumer.
_READ_TIMEOUT_S = 10.0


def store_key(fingerprint: bytes) -> bytes:
    """The schema store's key of a schema: its single-object fingerprint bytes (little-endian,
    as framed) in lower-case hex."""
    return fingerprint.hex().encode()


def publish_schema(producer: Producer, settings: KafkaSettings, schema: dict[str, Any]) -> bytes:
    """Produce one schema keyed by its fingerprint (idempotent: same key, same value)."""
    fp = avro_files.fingerprint(avro_files.parse(schema))
    producer.produce(
        settings.topics.schemas, key=store_key(fp), value=avro_files.canonical_text(schema)
    )
    return fp


def publish_event_schemas(settings: KafkaSettings, framing: Framing, *,
                          timeout_s: float = _PUBLISH_TIMEOUT_S) -> int:
    """Publish every event schema this version writes, at a process's start, and wait for the
    broker; return how many were acknowledged. Nothing to do under Confluent framing (the
    registry holds the schemas). A missing store topic (``computectl topics create`` not run
    yet) is a warning, not a failure: this process still works, only readers of newer records
    than theirs cannot resolve them. Its own producer, so a missing topic never holds up the
    flushes of the caller's records."""
    if framing is not Framing.SINGLE_OBJECT:
        return 0
    topic = settings.topics.schemas
    # Never create the store by asking for it: a producer's metadata request for one topic
    # auto-creates it on a broker that allows that (one partition, not compacted) - the store
    # is `computectl topics create`'s to make. So: no auto-creation, and the whole topic list.
    producer = Producer({**settings.producer_config(), "linger.ms": 0,
                         "allow.auto.create.topics": False})
    try:
        meta = producer.list_topics(timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            log.warning("schema store topic %s missing: schemas not published (run `computectl "
                        "topics create`)", topic)
            return 0
        acked: list[bool] = []
        for model in all_event_models():
            schema = avro_files.schema_json(model.avro_name)
            fp = avro_files.fingerprint(avro_files.parse(schema))
            producer.produce(topic, key=store_key(fp), value=avro_files.canonical_text(schema),
                             on_delivery=lambda err, _msg: acked.append(err is None))
        left = producer.flush(timeout_s)
        if left or not all(acked):
            log.warning("schema store %s: %d of %d schemas not acknowledged within %.0fs", topic,
                        left + acked.count(False), len(acked) + left, timeout_s)
            producer.purge()
        return acked.count(True)
    finally:
        producer.flush(0)


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
