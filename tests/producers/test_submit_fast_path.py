"""TaskProducer's fast path without a broker: librdkafka is replaced by a recording stand-in.

Checks that the records written from templates are exactly the codec's encoding of the validated
events, that every argument besides the params is still checked, how delivery reports release
PENDING/QUEUED, and what a failed produce leaves behind. tests/producers/test_submit.py covers
the same producer against a real broker; tests/producers/test_submit_records.py the templates.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import producers.submit as submit_module
from producers.errors import DeliveryError, TaskTooLargeError
from producers.examples import SEED_EXAMPLES
from producers.submit import _POLL_EVERY, Origin, TaskProducer, task_id_for, validate_params
from schemas.codec import EventCodec
from schemas.enums import GenerationStrategy, GenerationType, TaskStatus, TaskType
from schemas.errors import TaskValidationError
from schemas.events import TASK_SUBMITTED_MODELS, Envelope, Orchestration, StatusChanged
from schemas.headers import header_dict, new_uuid4, trace_id_of
from schemas.kafka_settings import KafkaSettings
from tests.schemas.test_registry_framing import InMemoryRegistry


class FakeMessage:
    def __init__(self, topic: str, key: str) -> None:
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key.encode()


_ABSENT = object()


class FakeProducer:
    """Records produce() calls; poll()/flush() serve a delivery report for each, in order."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.records: list[tuple[str, bytes, str, list[tuple[str, bytes]]]] = []
        self.pending: list[tuple[Any, FakeMessage]] = []
        self.polls = 0
        self.fail_next: KafkaError | None = None  # the next report carries this error
        self.raise_next: Exception | None = None  # the next produce() raises this

    def produce(self, topic, value=None, key=None, partition=-1, callback=_ABSENT, on_delivery=None,
                timestamp=0, headers=None):
        """confluent-kafka's produce(), positions included; as in its C code, ``on_delivery``
        (an alias) counts only when ``callback`` is not given at all, not even as None."""
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        assert partition == -1 and timestamp == 0, (partition, timestamp)
        self.records.append((topic, value, key, headers))
        report = on_delivery if callback is _ABSENT else callback
        if report is not None:
            self.pending.append((report, FakeMessage(topic, key)))

    def poll(self, timeout: float = -1) -> int:
        self.polls += 1
        pending, self.pending = self.pending, []
        for callback, msg in pending:
            err, self.fail_next = self.fail_next, None
            callback(err, msg)
        return len(pending)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return 0


@pytest.fixture
def producer(monkeypatch):
    monkeypatch.setattr(submit_module, "Producer", FakeProducer)
    monkeypatch.setattr(submit_module, "publish_schemas", lambda *args, **kwargs: None)
    return TaskProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="fake"))


def _decoded(producer: TaskProducer) -> list[tuple[str, Any, str, dict[str, str]]]:
    codec = EventCodec()
    return [(topic, codec.decode(value), key, header_dict(headers))
            for topic, value, key, headers in producer._producer.records]


def _orchestration() -> Orchestration:
    return Orchestration(generation_id=new_uuid4(), prediction_index=2,
                         generation_type=list(GenerationType)[0], strategy=list(GenerationStrategy)[0])


# --------------------------------------------------------------------------- records from templates


@pytest.mark.parametrize("task_type", list(TaskType))
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("registry", [False, True], ids=["single-object", "confluent"])
def test_records_are_the_codecs_encoding_of_the_validated_events(monkeypatch, task_type, extras, registry):
    monkeypatch.setattr(submit_module, "Producer", FakeProducer)
    monkeypatch.setattr(submit_module, "publish_schemas", lambda *args, **kwargs: None)
    codec = EventCodec(registry=InMemoryRegistry()) if registry else EventCodec()
    producer = TaskProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="fake"), codec=codec)
    orchestration = _orchestration()
    kwargs = dict(idempotency_key="key-1", orchestration=orchestration, attempt=2,
                  webhook_url="https://hooks.example.com/x", origin=Origin("i-1", "eu-1", "acme")) if extras else {}
    for _ in range(2):  # the second submit of a kind reuses its templates
        task_id = producer.submit(task_type, SEED_EXAMPLES[task_type], **kwargs)
        kwargs.pop("idempotency_key", None)
    producer.flush()
    records = producer._producer.records
    assert len(records) == 6
    model = TASK_SUBMITTED_MODELS[task_type]
    tasks = [codec.decode(value, expect=model) for topic, value, _, _ in records if topic != "fake.tasks.status"]
    statuses = [codec.decode(value, expect=StatusChanged) for topic, value, _, _ in records if topic == "fake.tasks.status"]
    assert tasks[0].envelope.task_id == task_id_for("key-1", "acme") if extras else task_id
    for _topic, value, _key, headers in records:
        event = codec.decode(value)
        assert codec.encode(event) == value  # byte for byte the encoder of record (= fastavro)
        assert header_dict(headers)["ce_id"] == event.envelope.event_id
    params = validate_params(task_type, SEED_EXAMPLES[task_type])
    for task in tasks:  # every value equals what the validated model holds
        expected = model(
            envelope=Envelope(
                event_id=task.envelope.event_id, task_id=task.envelope.task_id, task_type=task_type,
                attempt=2 if extras else 1, occurred_at=task.envelope.occurred_at, source="producer",
                origin_instance="i-1" if extras else None, origin_zone="eu-1" if extras else None,
                origin_tenant_id="acme" if extras else None),
            params=params, idempotency_key=None, orchestration=orchestration if extras else None,
            webhook_url="https://hooks.example.com/x" if extras else None)
        if extras and task is tasks[0]:
            expected = expected.model_copy(update={"idempotency_key": "key-1"})
        assert task == expected and codec.encode(task) == codec.encode(expected)
    assert [s.status for s in statuses] == [TaskStatus.PENDING, TaskStatus.QUEUED] * 2
    for task, status in zip([t for t in tasks for _ in range(2)], statuses):
        expected = StatusChanged(
            envelope=task.envelope.model_copy(update={"event_id": status.envelope.event_id,
                                                      "occurred_at": status.envelope.occurred_at}),
            status=status.status, generation_id=orchestration.generation_id if extras else None)
        assert status == expected and codec.encode(status) == codec.encode(expected)
        assert status.envelope.occurred_at >= task.envelope.occurred_at
        assert status.envelope.event_id != task.envelope.event_id
    assert len({e.envelope.event_id for e in tasks + statuses}) == 6


def test_records_of_ids_equal_to_the_templates_sentinels(producer):
    from producers import submit_records

    task_id = submit_records._TASK_ID
    producer.submit(TaskType.REFINE, SEED_EXAMPLES[TaskType.REFINE], task_id=task_id,
                    orchestration=_orchestration().model_copy(update={"generation_id": submit_records._GENERATION_ID}))
    producer.flush()
    codec = EventCodec()
    for _, value, key, _ in producer._producer.records:
        event = codec.decode(value)
        assert key == event.envelope.task_id == task_id and codec.encode(event) == value


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"webhook_url": "s3://bucket/hook"}, "webhook_url"),
        ({"webhook_url": 17}, "webhook_url"),
        ({"task_id": "not-a-uuid"}, "task_id"),
        ({"attempt": 0}, "attempt"),
        ({"attempt": 2**31}, "attempt"),
        ({"attempt": "three"}, "attempt"),
        ({"idempotency_key": 12}, "idempotency_key"),
        ({"orchestration": {"generation_id": "x"}}, "orchestration.generation_id"),
        ({"origin": {"tenant_id": "acme"}}, "origin"),
    ],
)
def test_arguments_besides_the_params_are_validated(producer, kwargs, field):
    with pytest.raises(TaskValidationError) as info:
        producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION], **kwargs)
    assert field in [f for f, _ in info.value.problems]
    assert producer._producer.records == [] and producer.stats.submitted == 0


def test_given_values_are_normalised_as_the_models_would(producer):
    task_id = str(uuid.uuid4())
    orchestration = _orchestration()
    returned = producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION],
                               task_id=task_id.upper(), attempt=2,
                               orchestration=orchestration.model_dump(mode="json"),
                               origin=Origin(tenant_id="acme"))
    producer.flush()
    assert returned == task_id
    (_, task, key, _), *_ = _decoded(producer)
    assert key == task_id and task.envelope.task_id == task_id and task.envelope.attempt == 2
    assert task.orchestration == orchestration and task.envelope.origin_tenant_id == "acme"


def test_origin_and_source_are_checked_once():
    with pytest.raises(TypeError):
        Origin(tenant_id=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TaskProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), source="")


# --------------------------------------------------------------------------- records and statuses


def test_each_task_gives_three_records_in_its_trace(producer):
    ids = [producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION]) for _ in range(100)]
    producer.flush()
    records = _decoded(producer)
    assert len(records) == 300
    by_task: dict[str, list] = {}
    for topic, event, key, headers in records:
        assert key == event.envelope.task_id
        assert list(headers) == ["ce_specversion", "ce_id", "ce_source", "ce_type", "traceparent"]
        assert headers["ce_id"] == event.envelope.event_id and headers["ce_type"] == event.avro_name
        assert headers["ce_source"] == "/compute/producer" and headers["ce_specversion"] == "1.0"
        by_task.setdefault(key, []).append((topic, event, headers))
    assert set(by_task) == set(ids)
    for _task_id, ((t0, _task, h0), (t1, pending, h1), (t2, queued, h2)) in by_task.items():
        assert t0 == "fake.tasks.generation" and t1 == t2 == "fake.tasks.status"
        assert pending.status is TaskStatus.PENDING and queued.status is TaskStatus.QUEUED
        assert trace_id_of(h0["traceparent"]) == trace_id_of(h1["traceparent"]) == trace_id_of(h2["traceparent"])
        assert len({h0["traceparent"], h1["traceparent"], h2["traceparent"]}) == 3
    assert len({e.envelope.event_id for _, e, _, _ in records}) == 300
    assert producer.stats.submitted == producer.stats.acknowledged == 100


def test_a_burst_polls_once_per_batch_and_a_trickle_on_every_submit(producer, monkeypatch):
    fake = producer._producer
    clock = [1000.0]
    monkeypatch.setattr(submit_module, "_monotonic", lambda: clock[0])
    producer.poll()
    fake.polls = 0
    for _ in range(3 * _POLL_EVERY):  # no time passes: a poll every _POLL_EVERY submits
        producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    assert fake.polls == 3
    # the statuses of acknowledged tasks were produced by those polls, without flush()
    statuses_before = sum(1 for r in fake.records if r[0] == "fake.tasks.status")
    assert statuses_before == 2 * 3 * _POLL_EVERY
    fake.polls = 0
    for _ in range(5):  # a trickle: time passes between submits, each one polls
        clock[0] += 1.0
        producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    assert fake.polls == 5
    assert sum(1 for r in fake.records if r[0] == "fake.tasks.status") == statuses_before + 2 * 5


def test_a_failed_delivery_is_reported_and_its_key_can_be_submitted_again(producer):
    fake = producer._producer
    fake.fail_next = KafkaError(KafkaError._MSG_TIMED_OUT)
    first = producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION],
                            idempotency_key="order-1")
    with pytest.raises(DeliveryError) as info:
        producer.flush()
    assert info.value.failures[0][0] == first
    assert not [r for r in fake.records if r[0] == "fake.tasks.status"]  # no status for it
    again = producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION],
                            idempotency_key="order-1")
    producer.flush()
    assert again == first == task_id_for("order-1")
    assert producer.stats.deduplicated == 0 and producer.stats.acknowledged == 1
    assert len(fake.records) == 1 + 1 + 2  # the failed task, its resend, PENDING and QUEUED


def test_a_produce_that_raises_is_not_remembered(producer):
    fake = producer._producer
    fake.raise_next = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(TaskTooLargeError, match="LLM_INTERACTION task's record .* over the broker's"):
        producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION],
                        idempotency_key="order-2")
    assert producer.stats.submitted == 0 and fake.records == []
    producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION],
                    idempotency_key="order-2")
    producer.flush()
    assert producer.stats.submitted == 1 and producer.stats.deduplicated == 0
    assert len(fake.records) == 3


def test_a_full_queue_is_waited_out(producer):
    fake = producer._producer
    fake.raise_next = BufferError("Local: Queue full")
    producer.submit(TaskType.GENERATION, SEED_EXAMPLES[TaskType.GENERATION])
    producer.flush()
    assert len(fake.records) == 3 and producer.stats.acknowledged == 1


def test_a_repeat_is_dropped_without_producing(producer):
    params = SEED_EXAMPLES[TaskType.GENERATION]
    first = producer.submit(TaskType.GENERATION, params, idempotency_key="k")
    assert producer.submit(TaskType.GENERATION, params, idempotency_key="k") == first
    producer.flush()
    assert producer.stats.deduplicated == 1 and len(producer._producer.records) == 3


def test_a_broker_refusal_as_too_large_is_named_in_the_delivery_error(producer):
    fake = producer._producer
    fake.fail_next = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    first = producer.submit(TaskType.LLM_INTERACTION, SEED_EXAMPLES[TaskType.LLM_INTERACTION])
    with pytest.raises(DeliveryError) as info:
        producer.flush()
    assert info.value.too_large == [first]


@pytest.mark.parametrize("where, params, extra", [
    ("prompt", {"prompt": "a \udfff b"}, {}),
    ("params.system_prompt", {"prompt": "hi", "system_prompt": "\ud800"}, {}),
    ("webhook_url", {"prompt": "hi"}, {"webhook_url": "https://hooks.example.com/\udfff"}),
    ("idempotency_key", {"prompt": "hi"}, {"idempotency_key": "k-\udfff"}),
])
def test_text_utf8_cannot_carry_is_a_validation_error_and_nothing_is_produced(producer, where, params,
                                                                          extra):
    with pytest.raises(TaskValidationError, match="lone surrogate|unicode string") as info:
        producer.submit(TaskType.LLM_INTERACTION, params, **extra)
    assert any(where.split(".")[-1] in path for path, _ in info.value.problems)
    producer.flush()
    assert producer._producer.records == [] and producer.stats.submitted == 0


@pytest.mark.parametrize("config", [{"t": float("nan")}, {"t": [1, float("inf")]},
                                    {"t": float("-inf")}, {"k": "\udfff"}, {"k": "a\x00"}])
def test_a_provider_config_json_cannot_carry_is_refused_at_validation(producer, config):
    with pytest.raises(TaskValidationError, match="provider_config"):
        producer.submit(TaskType.GENERATION, {"prompt": "hi", "provider_config": config})
    assert producer._producer.records == []
