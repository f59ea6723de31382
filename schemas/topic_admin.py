"""Create every topic the system uses, idempotently (``computectl topics create``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import ComputeError
from schemas.kafka_settings import KafkaSettings

_TIMEOUT_S = 30.0
_LEADER_POLL_S = 0.05  # polling interval while waiting for new topics' leaders
# The state and schema-store topics keep only the latest record per key.
_COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


class TopicSetupError(ComputeError):
    """A topic could not be created or has fewer partitions than configured. Check the broker's
    ACLs for CreateTopics, or raise the topic's partitions with kafka-topics.sh."""


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]


def ensure_topics(settings: KafkaSettings, admin: AdminClient | None = None) -> TopicReport:
    admin = admin or AdminClient(settings.client_config())
    topics = settings.topics
    wanted = topics.all()
    present = set(admin.list_topics(timeout=_TIMEOUT_S).topics)
    missing = [t for t in wanted if t not in present]
    created: list[str] = []
    if missing:
        _wait_for_brokers(admin, settings.replication_factor)
        compacted = topics.compacted()
        replication = (
            {} if settings.min_insync_replicas is None
            else {"min.insync.replicas": str(settings.min_insync_replicas)}
        )
        new = [
            NewTopic(
                t,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                config={**replication, **(_COMPACTED if t in compacted else {})},
            )
            for t in missing
        ]
        for name, future in admin.create_topics(new, operation_timeout=_TIMEOUT_S).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won
                    raise TopicSetupError(f"cannot create topic {name}: {exc}") from exc
    _wait_until_led(admin, settings, wanted)
    if created:
        _wait_until_serving(settings, created)
    return TopicReport(created=created, existing=[t for t in wanted if t not in created])


def _wait_for_brokers(admin: AdminClient, needed: int) -> None:
    """Return once the cluster has ``needed`` brokers (one per replica). A cluster that is
    starting (docker compose starts the topics job once node 1 answers) may still lack some:
    wait for them rather than fail; an RF above the cluster's size fails with a clear message."""
    deadline = time.monotonic() + _TIMEOUT_S
    while (count := len(admin.list_topics(timeout=_TIMEOUT_S).brokers)) < needed:
        if time.monotonic() > deadline:
            raise TopicSetupError(
                f"replication factor {needed} needs {needed} brokers; the cluster has {count}: "
                "set KAFKA_REPLICATION_FACTOR (and KAFKA_MIN_INSYNC_REPLICAS) to suit it"
            )
        time.sleep(_LEADER_POLL_S * 10)


def _wait_until_led(admin: AdminClient, settings: KafkaSettings, names: list[str]) -> None:
    """Return once every partition of every topic has a leader in the broker's metadata.

    CreateTopics returns before a new topic's leaders are in the metadata a client sees; a
    consumer or a watermark query in that window gets NOT_LEADER_FOR_PARTITION.
    """
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        meta = admin.list_topics(timeout=_TIMEOUT_S).topics
        short = [n for n in names if n in meta and len(meta[n].partitions) < settings.partitions]
        if short:
            raise TopicSetupError(
                f"topics with fewer than {settings.partitions} partitions: {', '.join(short)}"
            )
        waiting = [
            n for n in names
            if n not in meta or meta[n].error is not None
            or any(p.leader < 0 or p.error is not None for p in meta[n].partitions.values())
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TopicSetupError(f"no leader within {_TIMEOUT_S}s for: {', '.join(waiting[:5])}")
        time.sleep(_LEADER_POLL_S)


# Not flagged retriable by librdkafka for this call, yet as transient as a leader that moves
# while a new topic's metadata spreads over a cluster (three brokers, in CI): the client's own
# metadata lacks the partition (_UNKNOWN_PARTITION, _UNKNOWN_TOPIC) or the broker asked has not
# applied the topic yet (UNKNOWN_TOPIC_OR_PART).
_NOT_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
)


def watermarks(consumer: Consumer, partition: TopicPartition, timeout_s: float = _TIMEOUT_S) -> tuple[int, int]:
    """(low, high) offsets of a partition, retrying the transient errors of a partition whose
    leader is moving or just created (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE...)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=timeout_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not error.retriable() and error.code() not in _NOT_YET:
                raise
            if time.monotonic() > deadline:
                raise TopicSetupError(f"{partition.topic}[{partition.partition}]: {error.str()}") from exc
            time.sleep(_LEADER_POLL_S)


def _wait_until_serving(settings: KafkaSettings, names: list[str]) -> None:
    """A leader in the metadata is not yet a leader that serves (KRaft brokers apply the change
    asynchronously): return once every new partition answers a watermark query."""
    consumer = Consumer({**settings.client_config(), "group.id": "compute-topic-admin"})
    try:
        for name in names:
            for p in range(settings.partitions):
                watermarks(consumer, TopicPartition(name, p))
    finally:
        consumer.close()
