"""Which partition a keyed record lands on: murmur2, the Java client's default, for every writer.

The processors rely on a task's records sharing one partition number on every topic they are
written to (the task topic, the status topic, the state topic and the submissions changelog:
docs/PROCESSORS.md). That holds only if every writer picks the partition from the key the same
way. The Java client's default partitioner (and Faust's aiokafka, kafka-python, franz-go's
``StickyKeyPartitioner``, Sarama's ``NewReferenceHashPartitioner`` ...) is murmur2:

    partition = (murmur2(key) & 0x7fffffff) % partitions

so that is the contract (docs/WIRE_FORMAT.md, "Partitioning"): a producer in another language
keeps its client's default, and every Python producer sets librdkafka's ``murmur2_random``
(:data:`LIBRDKAFKA_PARTITIONER`, through ``KafkaSettings.producer_config()``), which is the same
function (a record without a key goes to a random partition, as Java's does).

:func:`key_partition` is the one place this code computes a partition itself (the processors'
repartition by generation id); ``tests/schemas/test_partitioning.py`` holds it, librdkafka and
aiokafka to one table of keys.
"""

from __future__ import annotations

# librdkafka's name for the Java-compatible partitioner; its own default
# (``consistent_random``, CRC-32) puts most keys elsewhere.
LIBRDKAFKA_PARTITIONER = "murmur2_random"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 as ``org.apache.kafka.common.utils.Utils.murmur2`` computes it (seed
    0x9747b28c), as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length & ~3
    for i in range(0, body, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[body + 2] << 16
    if tail >= 2:
        h ^= data[body + 1] << 8
    if tail >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` on a topic of ``partitions`` partitions: what the
    Java client's default partitioner, aiokafka's and librdkafka's ``murmur2_random`` give."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
