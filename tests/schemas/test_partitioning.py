"""One partitioner for every writer: murmur2, the Java client's default (schemas/partitioning.py).

The conformance program (tests/conformance) shows the Java client's own default partitioner
agreeing on the real broker; here the Python writers agree with a reference and each other.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from confluent_kafka import Producer

from schemas.kafka_settings import KafkaSettings
from schemas.partitioning import key_partition, murmur2
from schemas.topic_admin import ensure_topics

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: the Java client's own values (signed int).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# Task ids and other keys of every length modulo 4 (the hash's tail cases), plus the empty key.
KEYS = [str(uuid.UUID(int=n * 0x9E3779B97F4A7C15_F39CC0605CEDC834 % (1 << 128))).encode()
        for n in range(1, 41)] + [b"", b"a", b"ab", b"abc", b"abcd", b"gen-1", "zürich".encode()]


def _signed(h: int) -> int:
    return h - (1 << 32) if h & 0x80000000 else h


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2.items())
def test_murmur2_is_the_java_clients(key: bytes, java: int) -> None:
    assert _signed(murmur2(key)) == java


def test_key_partition_agrees_with_aiokafka_the_faust_apps_producer() -> None:
    partitioner = DefaultPartitioner()
    for key in KEYS:
        assert murmur2(key) == aiokafka_murmur2(key)
        for partitions in (1, 2, 6, 7, 12):
            assert key_partition(key, partitions) == partitioner(key, list(range(partitions)), None)


def test_key_partition_is_not_crc32_for_most_keys() -> None:
    """The point of the change: librdkafka's default (CRC-32) disagrees with Java for most keys."""
    import zlib

    assert sum(key_partition(k, 6) != zlib.crc32(k) % 6 for k in KEYS) > len(KEYS) // 2


def test_key_partition_refuses_a_topic_without_partitions() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        key_partition(b"k", 0)


def test_producer_config_sets_murmur2_and_client_config_does_not(kafka_settings: KafkaSettings) -> None:
    extra = kafka_settings.model_copy(update={"client_extra": {"partitioner": "consistent_random"}})
    assert extra.producer_config()["partitioner"] == "murmur2_random"  # extra cannot change it
    assert "partitioner" not in kafka_settings.client_config()  # consumers would warn about it


@pytest.mark.integration
def test_python_producers_land_where_murmur2_says(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings.model_copy(update={"partitions": 6})
    ensure_topics(kafka)
    topic = kafka.topics.status
    landed: dict[bytes, int] = {}
    producer = Producer({**kafka.producer_config(), "linger.ms": 5})
    for key in KEYS:
        if key:  # an empty key is "no key" to librdkafka's produce(): a random partition
            producer.produce(topic, b"x", key,
                             on_delivery=lambda err, msg: landed.update({msg.key(): msg.partition()}))
    assert producer.flush(30) == 0
    assert landed == {k: key_partition(k, 6) for k in KEYS if k}
