"""The takeover gate knows the records this worker finished itself before a partition went.

Seen in the 100,000-task backlog (docs/PERFORMANCE.md, issue 19): both workers were fenced on
a loaded machine, their commits of the last ~2,900 finished tasks rejected, and each was given
its own partitions back; the gate then read the status topic for every one of those records
(~0.55 s each: the scan starts at the task record's time, minutes of statuses back) and the
drain fell to ~2 tasks/s for many minutes. What a worker finished, it knows: those records are
committed again at once, and only the first record past them is checked on the topic.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message

from gpu_consumers.lanes import Lane, Lanes
from gpu_consumers.takeover import Answer, Check, Step
from gpu_consumers.takeover_gate import TakeoverGate
from gpu_consumers.worker_stats import WorkerStats
from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings
from tests.gpu_consumers.runtime_helpers import worker_settings

TOPIC = "t.tasks.image_adjuster"
TP = (TOPIC, 2)


class Lookup:
    """The status topic's answers, counted: NOT_ENDED for every task."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def check(self, task_id: str, attempt: int, written_ms: int) -> Check:
        self.asked.append(task_id)
        return Check(Answer.NOT_ENDED)


def _record(offset: int, written_ms: int) -> tuple[Message, Any]:
    msg = Message(topic=TOPIC, partition=TP[1], offset=offset, timestamp=(1, written_ms))
    task = SimpleNamespace(envelope=SimpleNamespace(task_id=f"task-{offset}", attempt=1))
    return msg, task


@pytest.fixture
def lanes_and_lane() -> tuple[Lanes, Lane]:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="t")
    lanes = Lanes(kafka, worker_settings(kafka), "w-1", stop=threading.Event(),
                  inflight=lambda: None)
    lane = Lane(TaskType.IMAGE_ADJUSTER, TOPIC, consumer=None)  # type: ignore[arg-type]
    lanes.lanes = [lane]
    return lanes, lane


def _fenced_after_finishing(lanes: Lanes, lane: Lane, *, up_to: int) -> None:
    """The worker finished records below ``up_to`` (commits sent, never confirmed), then its
    partition was lost (fenced) and assigned to it again."""
    lane.owned.add(TP)
    for offset in range(up_to):
        lane.commits.want(TP, offset + 1)
    lanes._revoked(lane, {TP}, lost=True)
    lane.owned.add(TP)
    lane.taken_over.add(TP)  # what on_assign does


def test_records_finished_here_are_skipped_without_reading_the_status_topic(lanes_and_lane):
    lanes, lane = lanes_and_lane
    _fenced_after_finishing(lanes, lane, up_to=5)
    lookup = Lookup()
    gate = TakeoverGate(lookup, lanes, stop=threading.Event(), stats=WorkerStats())

    steps = [gate.step(lane, *_record(offset, written_ms=1_000)) for offset in range(2, 5)]
    assert steps == [Step.SKIP] * 3 and lookup.asked == []
    # The first record it had not finished (the one running when the partition went, or a
    # later one) is asked about on the topic as before, and runs.
    assert gate.step(lane, *_record(5, written_ms=1_000)) is Step.RUN
    assert lookup.asked == ["task-5"]
    assert TP not in lane.taken_over and TP not in lane.commits.finished


def test_a_worker_that_finished_nothing_unconfirmed_asks_the_status_topic(lanes_and_lane):
    lanes, lane = lanes_and_lane
    _fenced_after_finishing(lanes, lane, up_to=5)
    lane.commits.finished.clear()  # e.g. a revocation whose commit the broker confirmed
    lookup = Lookup()
    gate = TakeoverGate(lookup, lanes, stop=threading.Event(), stats=WorkerStats())
    assert gate.step(lane, *_record(3, written_ms=1_000)) is Step.RUN
    assert lookup.asked == ["task-3"]
