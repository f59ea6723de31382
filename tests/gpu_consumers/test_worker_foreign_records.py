"""Task records another producer wrote with what ours refuse (issue 14): a non-finite number in
``provider_config``, text that is not UTF-8 (a surrogate written as CESU-8 bytes). A real worker
on the real broker dead-letters each and fails its task with INVALID_INPUT, and goes on to the
next task; it never runs one, retries one or stops."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from producers.submit import validate_params
from schemas.codec import EventCodec
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import TaskSubmitted
from schemas.headers import header_dict
from tests.gpu_consumers.test_worker_bad_input import (  # noqa: F401 (fixtures)
    failed,
    image_url,
    inputs,
    kafka,
    run_worker,
    status_log,
    submit,
)
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

# (what the valid record holds, what the foreign producer wrote instead: same length, so the
# Avro string's length prefix stays right)
FOREIGN = {
    "NaN in provider_config": ({"provider_config": {"t": 1.5}}, b'"t":1.5', b'"t":NaN'),
    "Infinity in provider_config": ({"provider_config": {"t": 12345678}}, b'"t":12345678',
                                    b'"t":Infinity'),
    "a CESU-8 surrogate in the prompt": ({"prompt": "ab-xyz-cd"}, b"xyz", b"\xed\xbf\xbf"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_foreign_record_the_contract_refuses_is_dead_lettered_as_invalid_input(
        kafka, status_log, run_worker, inputs, case):  # noqa: F811
    extra, valid_bytes, foreign_bytes = FOREIGN[case]
    params = validate_params(TaskType.IMAGE_ADJUSTER,
                             {"base_image_url": image_url(inputs, "f.png"), **extra})
    event = TaskSubmitted.new(params, source="foreign-producer")
    value = EventCodec().encode(event)
    assert value.count(valid_bytes) == 1
    foreign = value.replace(valid_bytes, foreign_bytes)
    topic = kafka.topics.task(TaskType.IMAGE_ADJUSTER)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=event.envelope.task_id, value=foreign)
    assert producer.flush(10) == 0
    good = submit(kafka, TaskType.IMAGE_ADJUSTER, {"base_image_url": image_url(inputs, "g.png")})

    stats = run_worker(tasks=2)

    assert stats.dead_lettered == 1
    state = failed(status_log, event.envelope.task_id)
    assert state.error_code is ErrorCode.INVALID_INPUT
    assert "could not be read" in state.error_message
    [dead] = read_topic(kafka, kafka.topics.dlq(topic), expect=1)
    assert dead.value() == foreign and header_dict(dead.headers())["original.topic"] == topic
    status_log.wait_terminal(good)
    assert status_log.state(good).status is TaskStatus.COMPLETED
