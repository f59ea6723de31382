"""``computectl db rebuild``: the projector's topics replayed from the beginning into an empty
database.

The records go through the live projector's own code (:func:`projection.batch.collect_batch`,
then :func:`projection.db.generation_projection.apply_generation_records` and
:func:`projection.db.projection.apply_batch`), batch by batch in topic order, so a rebuilt database
holds the same rows as the live projection: tests/projection/db/test_projector.py checks them row for
row after a run with duplicates and reordering. It joins no consumer group and commits nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from projection.batch import ProjectorStats, collect_batch, projector_topics
from projection.db.errors import NotEmptyError
from projection.db.generation_projection import apply_generation_records
from projection.db.migrate import migrate
from projection.db.projection import apply_batch
from projection.db.workflow_projection import project_workflow_records
from projection.projector import BATCH_SIZE, METADATA_TIMEOUT_S, POLL_TIMEOUT_S
from schemas.codec import EventCodec
from schemas.kafka_settings import KafkaSettings


@dataclass
class RebuildReport:
    records: int = 0
    tasks: int = 0
    events: int = 0
    skipped: int = 0
    generations: int = 0
    workflows: int = 0


def rebuild(
    database_url: str,
    kafka: KafkaSettings,
    *,
    codec: EventCodec | None = None,
    batch_size: int = BATCH_SIZE,
    timeout_s: float = 600.0,
) -> RebuildReport:
    """Replay the status, task, generations-state and workflows-state topics from the beginning (up to their ends
    when called) into the empty database at ``database_url`` (migrated first). Raises
    NotEmptyError if its tasks or generations table holds rows. Joins no consumer group and
    commits nothing."""
    migrate(database_url)
    codec = codec or EventCodec()
    report = RebuildReport()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in ("tasks", "generations", "workflows"):
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                raise NotEmptyError(f"the {table} table of {_redacted(database_url)} is not empty")
        consumer = Consumer({**kafka.client_config(), "group.id": f"rebuild-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            ends = _assign_from_beginning(consumer, projector_topics(kafka))
            stats = ProjectorStats()
            deadline = time.monotonic() + timeout_s
            while ends:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rebuild did not reach the end of the topics in {timeout_s}s")
                messages = consumer.consume(batch_size, POLL_TIMEOUT_S)
                batch = collect_batch(codec, messages, kafka.topics.status, stats,
                                      kafka.topics.generations_state, kafka.topics.workflows_state)
                apply_generation_records(conn, batch.generations)
                project_workflow_records(conn, batch.workflows)
                result = apply_batch(conn, batch.events)
                report.skipped += len(batch.bad)
                report.events += result.events_inserted
                for (topic, partition), offset in batch.offsets.items():
                    if offset >= ends.get((topic, partition), 0):
                        ends.pop((topic, partition), None)
                if ends and not messages:  # a compacted topic may end in a gap of offsets
                    for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                        if tp.offset >= ends[(tp.topic, tp.partition)]:
                            ends.pop((tp.topic, tp.partition))
            report.records = stats.records
        finally:
            consumer.close()
        report.tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        report.generations = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
        report.workflows = conn.execute("SELECT count(*) FROM workflows").fetchone()[0]
    return report


def _assign_from_beginning(consumer: Consumer, topics: list[str]) -> dict[tuple[str, int], int]:
    """Assign every partition of ``topics`` from offset 0; return the non-empty ones' ends."""
    meta = consumer.list_topics(timeout=METADATA_TIMEOUT_S).topics
    ends: dict[tuple[str, int], int] = {}
    assignment = []
    for topic in topics:
        if topic not in meta or meta[topic].error is not None:
            continue
        for p in meta[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=METADATA_TIMEOUT_S)
            if high > low:
                ends[(topic, p)] = high
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
    consumer.assign(assignment)
    return ends


def _redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}@{tail}"
