"""schemas.topic_admin.watermarks: which broker errors it waits out and which it raises.

The consumer is the unit's own collaborator here (a stub that fails a given number of times);
the real broker paths are covered by every fixture that creates topics."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from schemas.topic_admin import TopicSetupError, watermarks


class _FlakyConsumer:
    def __init__(self, code: int, failures: int) -> None:
        self.code, self.failures, self.calls = code, failures, 0

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return (0, 7)


@pytest.mark.parametrize("code", [
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,  # a new topic a cluster's broker has not applied yet (CI saw it)
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
])
def test_a_new_partitions_transient_errors_are_waited_out(code: int) -> None:
    consumer = _FlakyConsumer(code, failures=3)
    assert watermarks(consumer, TopicPartition("t", 0), timeout_s=5.0) == (0, 7)  # type: ignore[arg-type]
    assert consumer.calls == 4


def test_a_partition_that_never_comes_is_a_typed_error_naming_it() -> None:
    consumer = _FlakyConsumer(KafkaError.UNKNOWN_TOPIC_OR_PART, failures=10**6)
    with pytest.raises(TopicSetupError, match=r"t\[1\]"):
        watermarks(consumer, TopicPartition("t", 1), timeout_s=0.2)  # type: ignore[arg-type]


def test_a_lasting_error_is_raised_at_once() -> None:
    consumer = _FlakyConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED, failures=1)
    with pytest.raises(KafkaException):
        watermarks(consumer, TopicPartition("t", 0), timeout_s=5.0)  # type: ignore[arg-type]
    assert consumer.calls == 1
