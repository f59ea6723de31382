"""A batch of the projector's records, decoded: which topics the projector reads
(:func:`projector_topics`), and :func:`collect_batch`, which sorts one poll's records into the
task events, the GenerationRecord documents and the WorkflowState records of a :class:`Batch`
(each beside its record, for the DLQ), the unreadable ones (``bad``) and the offsets to store.

It is shared by the live projector (projection/projector.py) and ``rebuild``
(projection/rebuild.py), which is why both write the same rows. Nothing here touches PostgreSQL
or commits anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

from projection.db.generation_projection import decode_generation_record
from projection.db.projection import flatten
from projection.db.workflow_projection import decode_workflow_record
from projection.salvage import salvage_task
from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.events import StatusChanged, TaskSubmitted
from schemas.kafka_settings import KafkaSettings
from state.errors import LifecycleError
from state.lifecycle import view_event

# The projector's logger: the consumer errors logged here are the projector's (and rebuild's).
log = logging.getLogger("projection.projector")

Event = StatusChanged | TaskSubmitted


@dataclass
class ProjectorStats:
    """The projector's counters (here because :func:`collect_batch` counts ``records``)."""

    batches: int = 0
    records: int = 0
    tasks_written: int = 0
    events_inserted: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    db_retries: int = 0
    generations_written: int = 0
    workflows_written: int = 0
    stale_rows: int = 0  # batches written again because a remembered row had changed


@dataclass
class Batch:
    events: list[Event] = field(default_factory=list)
    event_messages: list[Message] = field(default_factory=list)  # each event's record
    bad: list[tuple[Message, Exception]] = field(default_factory=list)
    # GenerationRecord documents of the compacted generations-state topic, in topic order.
    generations: list[Any] = field(default_factory=list)
    generation_messages: list[Message] = field(default_factory=list)
    # WorkflowState records of the compacted workflows-state topic, in topic order.
    workflows: list[Any] = field(default_factory=list)
    workflow_messages: list[Message] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def drop(self, messages: list[Message]) -> None:
        """Leave out the events and generation records of ``messages``."""
        gone = {id(m) for m in messages}
        kept = [(m, e) for m, e in zip(self.event_messages, self.events) if id(m) not in gone]
        self.event_messages, self.events = [m for m, _ in kept], [e for _, e in kept]
        kept = [(m, g) for m, g in zip(self.generation_messages, self.generations)
                if id(m) not in gone]
        self.generation_messages, self.generations = [m for m, _ in kept], [g for _, g in kept]
        kept = [(m, w) for m, w in zip(self.workflow_messages, self.workflows) if id(m) not in gone]
        self.workflow_messages, self.workflows = [m for m, _ in kept], [w for _, w in kept]


def projector_topics(kafka: KafkaSettings) -> list[str]:
    topics = kafka.topics
    return [topics.status, *topics.task_topics(), topics.generations_state, topics.workflows_state]


def _decode(codec: EventCodec, msg: Message, status_topic: str) -> Event:
    """Decode one record to the event its topic carries; raise DecodeError/LifecycleError."""
    expect = StatusChanged if msg.topic() == status_topic else TaskSubmitted
    try:
        event = codec.decode(msg.value() or b"")
    except DecodeError as exc:
        if expect is StatusChanged:
            raise
        event = salvage_task(codec, msg.value() or b"", exc)  # a foreign provider_config
    if not isinstance(event, expect):
        raise DecodeError(f"expected a {expect.__name__} on {msg.topic()}, got {type(event).__name__}")
    if isinstance(event, StatusChanged):
        view_event(flatten(event))  # the fold's own checks, before the batch depends on them
    return event


def collect_batch(codec: EventCodec, messages: Iterable[Message], status_topic: str,
                  stats: ProjectorStats, generations_topic: str | None = None,
                  workflows_topic: str | None = None) -> Batch:
    batch = Batch()
    for msg in messages:
        if msg.error() is not None:
            if msg.error().fatal():
                raise RuntimeError(f"fatal Kafka error: {msg.error().str()}")
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", msg.error().str())
            continue
        batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        stats.records += 1
        try:
            if msg.topic() == generations_topic:
                batch.generations.append(decode_generation_record(msg.value(), msg.headers()))
                batch.generation_messages.append(msg)
            elif msg.topic() == workflows_topic:
                batch.workflows.append(decode_workflow_record(codec, msg.value()))
                batch.workflow_messages.append(msg)
            else:
                batch.events.append(_decode(codec, msg, status_topic))
                batch.event_messages.append(msg)
        except (DecodeError, LifecycleError) as exc:
            batch.bad.append((msg, exc))
    return batch
