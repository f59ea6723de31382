"""The producer against a real broker: round trip, status events, idempotency, bad input."""

from __future__ import annotations

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from producers.examples import SEED_EXAMPLES
from producers.submit import Origin, TaskProducer, task_id_for, validate_params
from schemas.codec import EventCodec
from schemas.enums import TaskStatus, TaskType
from schemas.errors import DecodeError, TaskValidationError
from schemas.events import TASK_SUBMITTED_MODELS, StatusChanged
from schemas.headers import header_dict
from schemas.topic_admin import ensure_topics
from tests.kafka_helpers import read_topic, record_count

pytestmark = pytest.mark.integration


@pytest.fixture
def topics_ready(kafka_settings):
    ensure_topics(kafka_settings)
    return kafka_settings


def test_every_task_type_is_read_back_by_an_independent_consumer(topics_ready):
    settings = topics_ready
    with TaskProducer(settings) as producer:
        ids = {t: producer.submit(t, SEED_EXAMPLES[t]) for t in TaskType}
    codec = EventCodec()  # a fresh reader: knows nothing the producer knew
    for task_type, task_id in ids.items():
        [msg] = read_topic(settings, settings.topics.task(task_type), expect=1)
        event = codec.decode(msg.value(), expect=TASK_SUBMITTED_MODELS[task_type])
        assert msg.key().decode() == task_id == event.envelope.task_id
        assert event.envelope.task_type is task_type and event.envelope.attempt == 1
        assert event.params == validate_params(task_type, SEED_EXAMPLES[task_type])
        headers = header_dict(msg.headers())
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == event.envelope.event_id
        assert headers["ce_type"] == event.avro_name
        assert list(headers) == ["ce_specversion", "ce_id", "ce_source", "ce_type", "traceparent"]
        # The record's own timestamp is the producer's clock when it produced: occurred_at's time.
        kind, millis = msg.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME
        assert abs(millis / 1000 - event.envelope.occurred_at.timestamp()) < 5
        assert headers["traceparent"].startswith("00-") and len(headers["traceparent"]) == 55


def test_pending_then_queued_follow_the_acknowledged_task(topics_ready):
    settings = topics_ready
    with TaskProducer(settings) as producer:
        task_id = producer.submit("generation", SEED_EXAMPLES[TaskType.GENERATION])
    codec = EventCodec()
    msgs = read_topic(settings, settings.topics.status, expect=2)
    events = [codec.decode(m.value(), expect=StatusChanged) for m in msgs]
    assert [e.status for e in events] == [TaskStatus.PENDING, TaskStatus.QUEUED]
    assert {e.envelope.task_id for e in events} == {task_id}
    assert len({e.envelope.event_id for e in events}) == 2
    # status events continue the task's trace
    [task_msg] = read_topic(settings, settings.topics.task(TaskType.GENERATION), expect=1)
    trace = header_dict(task_msg.headers())["traceparent"].split("-")[1]
    assert all(header_dict(m.headers())["traceparent"].split("-")[1] == trace for m in msgs)


def test_origin_version_and_entity_id_reach_the_task_and_its_statuses(topics_ready):
    """Issue 17: the producer's origin version and each task's entity id are on the task record
    and on its PENDING and QUEUED; a task without an entity id has null there."""
    settings = topics_ready
    origin = Origin(instance="backend-7", zone="eu-1", version="backend-4.2.1")
    with TaskProducer(settings, origin=origin) as producer:
        with_entity = producer.submit(TaskType.REFINE, SEED_EXAMPLES[TaskType.REFINE], entity_id="order-ü-42")
        without = producer.submit(TaskType.REFINE, SEED_EXAMPLES[TaskType.REFINE])
        with pytest.raises(TaskValidationError, match="entity_id"):
            producer.submit(TaskType.REFINE, SEED_EXAMPLES[TaskType.REFINE], entity_id=42)
    codec = EventCodec()
    tasks = [codec.decode(m.value(), expect=TASK_SUBMITTED_MODELS[TaskType.REFINE])
             for m in read_topic(settings, settings.topics.task(TaskType.REFINE), expect=2)]
    statuses = [codec.decode(m.value(), expect=StatusChanged)
                for m in read_topic(settings, settings.topics.status, expect=4)]
    expected = {with_entity: "order-ü-42", without: None}
    for event in [*tasks, *statuses]:
        env = event.envelope
        assert (env.origin_version, env.origin_instance, env.origin_zone) == ("backend-4.2.1", "backend-7", "eu-1")
        assert env.entity_id == expected[env.task_id]
    assert sorted(e.status.value for e in statuses if e.envelope.task_id == with_entity) == ["PENDING", "QUEUED"]


def test_repeated_idempotency_key_returns_the_same_task_and_sends_nothing(topics_ready):
    settings = topics_ready
    params = SEED_EXAMPLES[TaskType.LLM_INTERACTION]
    with TaskProducer(settings) as producer:
        first = producer.submit(TaskType.LLM_INTERACTION, params, idempotency_key="order-17")
        producer.flush()
        second = producer.submit(TaskType.LLM_INTERACTION, params, idempotency_key="order-17")
        producer.flush()
        assert producer.stats.deduplicated == 1 and producer.stats.submitted == 1
    assert first == second == task_id_for("order-17")
    assert record_count(settings, settings.topics.task(TaskType.LLM_INTERACTION)) == 1
    assert record_count(settings, settings.topics.status) == 2
    # another process with the same key names the same task
    assert task_id_for("order-17") == first
    assert task_id_for("order-17", tenant_id="other-tenant") != first


# One violation of every seed range: (task type, field, bad value).
RANGE_VIOLATIONS = [
    (TaskType.GENERATION, "subject_lora_weight", 1.01),
    (TaskType.GENERATION, "product_lora_weight", -0.1),
    (TaskType.GENERATION, "style_lora_weight", 2),
    (TaskType.GENERATION, "product2_lora_weight", -1),
    (TaskType.GENERATION, "reference_image_strength", 1.5),
    (TaskType.GENERATION, "width", 10),
    (TaskType.EDITING, "strength", 1.2),
    (TaskType.REFINE, "upscale_factor", 4.5),
    (TaskType.REFINE, "upscale_denoise", -0.2),
    (TaskType.REFINE, "face_detail_denoise", 1.1),
    (TaskType.VIDEO_GENERATION, "motion_bucket_id", 0),
    (TaskType.VIDEO_GENERATION, "motion_bucket_id", 256),
    (TaskType.BACKGROUND_FIX, "blend_strength", 3),
    (TaskType.FACE_ENHANCER, "strength", -0.5),
    (TaskType.IMAGE_ADJUSTER, "brightness", 1.5),
    (TaskType.IMAGE_ADJUSTER, "contrast", -1.01),
    (TaskType.IMAGE_ADJUSTER, "saturation", 2),
    (TaskType.IMAGE_ADJUSTER, "warmth", -3),
    (TaskType.DETAIL_ENHANCER, "strength", 7),
    (TaskType.BACKGROUND_REMOVE, "output_format", "gif"),
    (TaskType.LLM_INTERACTION, "temperature", 2.5),
]


@pytest.mark.parametrize(("task_type", "field", "value"), RANGE_VIOLATIONS)
def test_a_broken_range_is_refused_naming_the_field_and_nothing_is_produced(
    topics_ready, task_type, field, value
):
    settings = topics_ready
    with TaskProducer(settings) as producer:
        with pytest.raises(TaskValidationError) as info:
            producer.submit(task_type, {**SEED_EXAMPLES[task_type], field: value})
    assert field in str(info.value)
    assert [f for f, _ in info.value.problems] == [field]
    assert record_count(settings, settings.topics.task(task_type)) == 0
    assert record_count(settings, settings.topics.status) == 0


@pytest.mark.parametrize(
    ("task_type", "params", "field"),
    [
        ("sketching", {"prompt": "x"}, "task_type"),
        (TaskType.GENERATION, {"width": 512}, "prompt"),
        (TaskType.BACKGROUND_REMOVE, {"output_format": "png"}, "image_url"),
        (TaskType.EDITING, {**SEED_EXAMPLES[TaskType.EDITING], "colour": "red"}, "colour"),
    ],
)
def test_unknown_type_missing_or_unknown_field_is_refused(topics_ready, task_type, params, field):
    settings = topics_ready
    with TaskProducer(settings) as producer:
        with pytest.raises(TaskValidationError) as info:
            producer.submit(task_type, params)
    assert field in str(info.value)
    assert sum(record_count(settings, t) for t in settings.topics.task_topics()) == 0


@pytest.mark.parametrize(
    "data",
    [b"", b"{\"prompt\": \"json, not avro\"}", b"\xc3\x01" + b"\x00" * 8 + b"x", b"\xc3\x01\x12", b"\x00\x00"],
)
def test_undecodable_bytes_raise_a_decode_error(data):
    with pytest.raises(DecodeError):
        EventCodec().decode(data)
