"""The worker group heals, and finished work is not run again (issue 15, items 3 and 4).

On the real broker, with worker processes killed by SIGKILL (the test's own children, started
with ``tests/gpu_consumers/noop_worker.py``) next to a worker in this process:

* a killed member's partitions are served by the healthy member within a bound (the session
  timeout, 10 s, plus a rebalance), and ``/monitoring/workers``'s source (the group's members)
  stops listing it: with librdkafka's 45 s session the queue stood still for 45 s and more;
* a worker killed after its COMPLETED was acknowledged but before its commit: the next owner
  of the partition does not run that task again (one PROCESSING per task on the status topic).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from api.monitoring import KafkaMonitor
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from schemas.enums import TaskStatus
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import (
    TYPE,
    Running,
    Scripted,
    committed,
    submit,
    worker_settings,
)
from tests.kafka_helpers import StatusLog, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Session timeout (10 s) + a rebalance + a loaded machine; librdkafka's default session alone
# is 45 s.
HEAL_BOUND_S = 30.0
START_S = 60.0  # a worker process imports the runtime and joins its group


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    ensure_topics(kafka_settings)
    return kafka_settings


@pytest.fixture
def statuses(kafka: KafkaSettings) -> Iterator[StatusLog]:
    log = StatusLog(kafka, deadline_s=HEAL_BOUND_S)
    yield log
    log.close()


@pytest.fixture
def processes(kafka: KafkaSettings, tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def start(worker_id: str, **env: str) -> subprocess.Popen:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "KAFKA_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gpu_consumers.noop_worker", kafka.bootstrap_servers,
             kafka.topic_prefix, worker_id, str(tmp_path / "results")],
            cwd=REPO, env={**clean, **env}, stdout=(tmp_path / f"{worker_id}.log").open("w"),
            stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def members(kafka: KafkaSettings) -> dict[str, int]:
    """client id -> partitions assigned, of the worker group's members (what the monitor reads)."""
    group = f"{kafka.topic_prefix}-workers.{TYPE.slug}"
    admin = AdminClient(kafka.client_config())  # kept referenced: its futures die with it
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
    except KafkaException:  # e.g. NOT_COORDINATOR while the offsets topic is being created
        return {}
    return {m.client_id: len(m.assignment.topic_partitions if m.assignment else [])
            for m in desc.members}


def processing_starts(log: StatusLog, task_id: str) -> int:
    return sum(1 for e in log.events[task_id]
               if e.status is TaskStatus.PROCESSING and not (e.progress or 0))


def test_a_killed_members_partitions_are_served_by_a_healthy_member_within_a_bound(
        kafka, statuses, processes, tmp_path):
    doomed = processes("doomed")
    wait_for(lambda: members(kafka).get("doomed", 0) == 2, "the doomed worker to own both partitions",
             START_S, also=lambda: doomed.poll() is None or pytest.fail("the worker died"))
    healthy = Running(_worker(kafka, tmp_path, "healthy"))
    wait_for(lambda: members(kafka) == {"doomed": 1, "healthy": 1},
             "the healthy worker to share the partitions", START_S)

    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL
    killed_at = time.monotonic()
    task_ids = submit(kafka, *["ok"] * 12)  # both partitions get some (keyed by random ids)

    statuses.wait_terminal(*task_ids)
    healed_s = time.monotonic() - killed_at
    assert all(statuses.state(t).status is TaskStatus.COMPLETED for t in task_ids)
    assert {e.worker_id for t in task_ids for e in statuses.events[t] if e.worker_id} == {"healthy"}
    assert healed_s < HEAL_BOUND_S, healed_s
    # The monitor's source no longer lists the dead member (it lists the group's live members).
    monitor = KafkaMonitor(kafka, f"{kafka.topic_prefix}-workers")
    listed = next(g for g in monitor.workers() if g.task_type is TYPE)
    assert [m["client_id"] for m in listed.members] == ["healthy"]
    healthy.worker.stop()
    healthy.join()


def test_a_task_finished_before_its_worker_died_uncommitted_is_not_run_again(
        kafka, statuses, processes, tmp_path):
    # The worker dies right after the broker acknowledged the third task's COMPLETED, before it
    # commits that offset: the next owner of the partition starts from the offset before it.
    doomed = processes("doomed", WORKER_FAULT_POINT="after_terminal", WORKER_FAULT_AFTER="2")
    wait_for(lambda: members(kafka).get("doomed", 0) == 2, "the doomed worker to own both partitions",
             START_S, also=lambda: doomed.poll() is None or pytest.fail("the worker died"))
    first = submit(kafka, *["ok"] * 3)
    assert doomed.wait(HEAL_BOUND_S) == -signal.SIGKILL
    statuses.wait_terminal(*first)
    more = submit(kafka, *["ok"] * 4)

    successor = Running(_worker(kafka, tmp_path, "successor"))
    statuses.wait_terminal(*more)
    # Every record committed: the successor has been through both partitions (the uncommitted
    # record may sit on one that none of ``more`` went to).
    wait_for(lambda: committed(kafka) == len(first) + len(more), "every record committed",
             HEAL_BOUND_S)
    successor.worker.stop()
    stats = successor.join()

    statuses.drain()
    starts = Counter({t: processing_starts(statuses, t) for t in first + more})
    assert all(n == 1 for n in starts.values()), starts  # no finished task ran twice
    assert all(len(statuses.terminals(t)) == 1 for t in first + more)
    # At least the one the doomed worker finished but did not commit (an earlier commit may
    # still have been on its way when it died).
    assert 1 <= stats.already_ended <= len(first)
    assert stats.completed == len(more)


def test_a_static_member_restarted_at_once_after_a_sigkill_serves_its_partitions(
        kafka, statuses, processes):
    # Found by the fault suite on the three-broker cluster: under KIP-848 the restarted process
    # is refused ("the instance ID is still used by another member") until the old session
    # expires; that error is fatal for the consumer, and the worker went on polling the dead
    # consumer: half the tasks stood still until the scenario ended.
    doomed = processes("doomed", WORKER_GROUP_INSTANCE_ID="static-1")
    wait_for(lambda: members(kafka).get("doomed", 0) == 2, "the doomed worker to own both partitions",
             START_S, also=lambda: doomed.poll() is None or pytest.fail("the worker died"))
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL
    reborn = processes("reborn", WORKER_GROUP_INSTANCE_ID="static-1")
    wait_for(lambda: members(kafka).get("reborn", 0) == 2,
             "the restarted worker to own both partitions", START_S + HEAL_BOUND_S,
             also=lambda: reborn.poll() is None or pytest.fail("the worker died"))
    task_ids = submit(kafka, *["ok"] * 6)
    statuses.wait_terminal(*task_ids)
    assert all(statuses.state(t).status is TaskStatus.COMPLETED for t in task_ids)
    assert {e.worker_id for t in task_ids for e in statuses.events[t] if e.worker_id} == {"reborn"}
    assert reborn.poll() is None


def _worker(kafka: KafkaSettings, tmp_path: Path, worker_id: str) -> Worker:
    return Worker(kafka, worker_settings(kafka), {TYPE: {"test": Scripted}},
                  FileStore(tmp_path / "results"), None, None, worker_id=worker_id)
