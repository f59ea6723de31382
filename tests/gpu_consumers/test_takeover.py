"""The takeover check does not run a finished task again when it cannot read the status topic.

Found by the fault suite (issue 15, item 4): after an 8 s broker freeze the check's reader failed
with FENCED_LEADER_EPOCH (a client keeps a stale leader epoch across the freeze) and the worker
took "could not read" for "not ended" and ran a finished task a second time. On the real broker,
with the check's reader (its own collaborator) wrapped so that its first offset lookups fail with
that error, a successor worker must commit the finished task without running it: one PROCESSING
per task on the status topic.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from gpu_consumers import takeover
from tests.gpu_consumers.runtime_helpers import Running, committed, submit
from tests.gpu_consumers.test_group_healing import (  # noqa: F401 (fixtures)
    HEAL_BOUND_S,
    START_S,
    _worker,
    kafka,
    members,
    processes,
    processing_starts,
    statuses,
)
from tests.kafka_helpers import wait_for

pytestmark = pytest.mark.integration


class FencedReaders:
    """Makes the check's readers: real consumers whose first ``failures`` offset lookups (over all
    readers made) fail as the fault suite's did."""

    def __init__(self, failures: int) -> None:
        self.left = failures
        self.made = 0

    def __call__(self, config: dict[str, Any]) -> Any:
        self.made += 1
        return _FencedReader(Consumer(config), self)


class _FencedReader:
    def __init__(self, real: Consumer, readers: FencedReaders) -> None:
        self._real = real
        self._readers = readers

    def offsets_for_times(self, *args: Any, **kwargs: Any) -> Any:
        if self._readers.left > 0:
            self._readers.left -= 1
            raise KafkaException(KafkaError(
                KafkaError.FENCED_LEADER_EPOCH,
                "Failed to get offsets: Broker: Leader epoch is older than broker epoch"))
        return self._real.offsets_for_times(*args, **kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._real, name)


@pytest.mark.parametrize("failures", [1, 6], ids=["fenced-once", "unreadable-a-while"])
def test_a_finished_task_is_not_run_again_when_the_takeover_check_cannot_read(
        kafka, statuses, processes, tmp_path, monkeypatch, failures):  # noqa: F811
    readers = FencedReaders(failures)
    monkeypatch.setattr(takeover, "Consumer", readers)
    # The worker dies right after the broker acknowledged the third task's COMPLETED, before it
    # commits that offset.
    doomed = processes("doomed", WORKER_FAULT_POINT="after_terminal", WORKER_FAULT_AFTER="2")
    wait_for(lambda: members(kafka).get("doomed", 0) == 2, "the doomed worker to own both partitions",
             START_S, also=lambda: doomed.poll() is None or pytest.fail("the worker died"))
    first = submit(kafka, *["ok"] * 3)
    assert doomed.wait(HEAL_BOUND_S) == -signal.SIGKILL
    statuses.wait_terminal(*first)

    # Only finished tasks are queued when the successor takes over: every check it makes now is
    # of an ended task, and the first ones fail.
    successor = Running(_worker(kafka, tmp_path, "successor"))
    wait_for(lambda: committed(kafka) == len(first), "the finished tasks committed",
             HEAL_BOUND_S + 30.0)
    more = submit(kafka, *["ok"] * 2)
    statuses.wait_terminal(*more)
    wait_for(lambda: committed(kafka) == len(first) + len(more), "every record committed",
             HEAL_BOUND_S)
    successor.worker.stop()
    stats = successor.join()

    statuses.drain()
    starts = Counter({t: processing_starts(statuses, t) for t in first + more})
    assert all(n == 1 for n in starts.values()), starts  # no finished task ran twice
    assert all(len(statuses.terminals(t)) == 1 for t in first + more)
    assert readers.left == 0  # the failures did happen
    # One failure: a fresh reader answers at once. More than the fresh retries: the check said
    # "unknown" and the worker waited (partitions paused) instead of running the task.
    assert (stats.takeover_waits > 0) == (failures > takeover.FRESH_RETRIES)
    assert 1 <= stats.already_ended <= len(first)
    assert stats.completed == len(more)
