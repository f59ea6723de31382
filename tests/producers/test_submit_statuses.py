"""PENDING/QUEUED against a real broker: a burst gets every status, in order; a trickle of submits
gets them without waiting for flush()."""

from __future__ import annotations

import time

import pytest

from producers.examples import SEED_EXAMPLES
from producers.submit import TaskProducer
from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.events import StatusChanged
from schemas.headers import header_dict
from schemas.topic_admin import ensure_topics
from tests.kafka_helpers import read_topic, record_count

pytestmark = pytest.mark.integration


@pytest.fixture
def topics_ready(kafka_settings):
    ensure_topics(kafka_settings)
    return kafka_settings


def test_a_burst_gets_pending_then_queued_for_every_task(topics_ready):
    settings = topics_ready
    count = 2000
    with TaskProducer(settings) as producer:
        ids = [producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION]) for _ in range(count)]
    assert producer.stats.acknowledged == count and len(set(ids)) == count
    assert record_count(settings, settings.topics.task(TaskType.GENERATION)) == count
    assert record_count(settings, settings.topics.status) == 2 * count
    codec = EventCodec()
    statuses: dict[str, list[TaskStatus]] = {}
    for msg in read_topic(settings, settings.topics.status, expect=2 * count):
        event = codec.decode(msg.value(), expect=StatusChanged)
        assert msg.key().decode() == event.envelope.task_id
        assert header_dict(msg.headers())["ce_type"] == StatusChanged.avro_name
        statuses.setdefault(event.envelope.task_id, []).append(event.status)
    assert statuses == {task_id: [TaskStatus.PENDING, TaskStatus.QUEUED] for task_id in ids}


def test_statuses_follow_the_ack_without_a_flush(topics_ready):
    settings = topics_ready
    producer = TaskProducer(settings)
    try:
        first = producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
        deadline = time.monotonic() + 30
        while producer.stats.acknowledged < 1:  # a trickle: each submit serves earlier acks
            assert time.monotonic() < deadline, "the first task was never acknowledged"
            time.sleep(0.05)
            producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION])
        # no flush(): the statuses of the acknowledged task are on their way already
        codec = EventCodec()
        first_statuses: list[TaskStatus] = []
        while len(first_statuses) < 2:
            assert time.monotonic() < deadline, f"statuses of {first} without a flush: {first_statuses}"
            time.sleep(0.1)
            msgs = read_topic(settings, settings.topics.status,
                              expect=record_count(settings, settings.topics.status))
            first_statuses = [codec.decode(m.value(), expect=StatusChanged).status
                              for m in msgs if m.key().decode() == first]
        assert first_statuses == [TaskStatus.PENDING, TaskStatus.QUEUED]
    finally:
        producer.close()
