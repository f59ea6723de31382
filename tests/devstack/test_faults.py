"""Faults on the local stack's real processes, on the same data: ``computectl dev restart`` /
``stop`` / ``start`` / ``freeze``, the LocalStack methods, and the three-broker cluster
(``dev up --brokers 3``): RF 3, min ISR 2, an acks=all producer through a node's loss.

Each stack here is the test's own (its own state folder, its own ports): the session's broker
is never touched. Start-up on this 2-core machine: one broker ~5 s, the cluster ~25-45 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from devstack import control
from devstack.procs import pid_alive, process_group_members, wait_until
from devstack.server import (
    OWNER_FILE,
    record_halted,
    record_owner,
    sweep_stale_workdirs,
)
from devstack.stack import LocalStack
from devstack.system import stack_kafka_settings
from schemas.topic_admin import ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


# ---------------------------------------------------------------------------- helpers

def cli(*args: str, state_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "COMPUTE_DEVSTACK_STATE_DIR": str(state_dir)},
    )


def recorded(state_dir: Path) -> dict[str, tuple[int, int | None]]:
    """name -> (pid, start ticks) of every process the state file names as running."""
    state = json.loads((state_dir / "state.json").read_text())
    found = {}
    for name, comp in state["components"].items():
        for i, proc in enumerate(comp.get("nodes") or [comp]):
            if proc.get("pid"):
                found[f"{name}-{i + 1}" if "nodes" in comp else name] = (proc["pid"], proc.get("start_ticks"))
    return found


def gone(pid: int, ticks: int | None) -> bool:
    return not pid_alive(pid, ticks) and not process_group_members(pid)


def produce(bootstrap: str, topic: str, values: list[bytes], timeout_s: float = 60) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list[Any] = []
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=value,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(timeout_s) == 0, "records still unacknowledged"
    assert errors == []


def read_back(bootstrap: str, topic: str, partitions: int, expect: int, timeout_s: float = 60) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                values.append(msg.value())
        return values
    finally:
        consumer.close()


def create_topic(bootstrap: str, name: str, partitions: int = 1, replication: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, replication)], operation_timeout=30).values():
        future.result(timeout=30)


# ---------------------------------------------------------------------------- one broker, the CLI

def test_dev_restart_keeps_records_and_tables_and_down_stops_the_new_pids(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    up = cli("up", "--json", "--no-s3", state_dir=state_dir)
    assert up.returncode == 0, up.stderr
    seen = dict(recorded(state_dir))
    try:
        env = json.loads(up.stdout)
        bootstrap, db = env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_URL"]
        topic = f"restart-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic)
        sent = [f"record {i}".encode() for i in range(20)]
        produce(bootstrap, topic, sent)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")

        restarted = cli("restart", "kafka", state_dir=state_dir)
        assert restarted.returncode == 0, restarted.stderr
        now = recorded(state_dir)
        assert now["kafka"] != seen["kafka"] and pid_alive(*now["kafka"]), "a new broker process, recorded"
        assert gone(*seen["kafka"])
        seen["kafka-2nd"] = now["kafka"]
        # Same port, same data: the topic and its records are there.
        assert read_back(bootstrap, topic, 1, expect=20) == sent

        crashed = cli("restart", "postgres", "--kill", state_dir=state_dir)
        assert crashed.returncode == 0, crashed.stderr
        seen["postgres-2nd"] = recorded(state_dir)["postgres"]
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]

        stopped = cli("stop", "kafka", state_dir=state_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert "kafka" not in recorded(state_dir) and gone(*seen["kafka-2nd"])
        status = cli("status", state_dir=state_dir)
        assert status.returncode == 1 and "STOPPED" in status.stdout, status.stdout
        started = cli("start", "kafka", state_dir=state_dir)
        assert started.returncode == 0, started.stderr
        seen["kafka-3rd"] = recorded(state_dir)["kafka"]
        produce(bootstrap, topic, [b"after"])
        assert read_back(bootstrap, topic, 1, expect=21)[-1] == b"after"
    finally:
        down = cli("down", state_dir=state_dir)
    assert down.returncode == 0, down.stderr
    for name, (pid, ticks) in seen.items():
        assert wait_until(lambda p=pid, t=ticks: gone(p, t), 10), f"{name} (pid {pid}) left behind"


# ---------------------------------------------------------------------------- the Python API

def test_stack_methods_crash_freeze_and_restart_a_broker_on_its_data() -> None:
    with LocalStack(postgres=False, s3=False) as stack:
        bootstrap = stack.kafka.bootstrap_servers  # type: ignore[union-attr]
        topic = f"api-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic)
        produce(bootstrap, topic, [b"one", b"two"])

        stack.freeze_broker(1)
        assert stack.status()["kafka"] == {"pid": stack.broker(1).pid, "alive": True, "answering": False,
                                           "frozen": True}
        stack.thaw_broker(1)
        assert wait_until(lambda: stack.status()["kafka"]["answering"], 30)

        first = stack.broker(1).pid
        stack.stop_broker(1, kill=True)  # a crash: no controlled shutdown
        assert stack.broker(1).pid is None and not stack.status()["kafka"]["alive"]
        stack.start_broker(1)
        assert stack.broker(1).pid not in (None, first)
        assert read_back(bootstrap, topic, 1, expect=2) == [b"one", b"two"]
        # (restart_kafka() is the same halt + resume as `dev restart kafka`, tested above.)
        pids = stack.pids()
    assert all(not pid_alive(p) for p in pids)


# ---------------------------------------------------------------------------- the cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """`dev up --brokers 3` (Kafka only) in a state folder of its own; `dev down` after."""
    state_dir = tmp_path_factory.mktemp("cluster") / "state"
    t0 = time.monotonic()
    up = cli("up", "--json", "--brokers", "3", "--no-postgres", "--no-s3", state_dir=state_dir)
    assert up.returncode == 0, up.stderr
    print(f"cluster of 3 started in {time.monotonic() - t0:.1f}s")
    try:
        yield state_dir, json.loads(up.stdout)
    finally:
        if (state_dir / "state.json").exists():
            cli("down", state_dir=state_dir)


def isr_sizes(admin: AdminClient, topic: str) -> list[int]:
    return [len(p.isrs) for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values()]


def test_cluster_topics_get_rf3_and_min_isr2(cluster: tuple[Path, dict[str, str]]) -> None:
    _, env = cluster
    assert len(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3
    assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    # What `computectl up` creates its topics with (it once passed the bootstrap alone: RF 1).
    settings = stack_kafka_settings(env, topic_prefix=f"c{uuid.uuid4().hex[:6]}", partitions=2)
    ensure_topics(settings)

    admin = AdminClient(settings.client_config())
    meta = admin.list_topics(timeout=10)
    assert len(meta.brokers) == 3
    names = settings.topics.all()
    for name in names:
        assert {len(p.replicas) for p in meta.topics[name].partitions.values()} == {3}, name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in (settings.topics.status, settings.topics.state)]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result(timeout=30)["min.insync.replicas"].value == "2", resource
    # The brokers' own defaults follow the cluster: internal topics replicated 3 times too.
    broker = ConfigResource(ConfigResource.Type.BROKER, "2")
    configs = admin.describe_configs([broker])[broker].result(timeout=30)
    assert configs["offsets.topic.replication.factor"].value == "3"
    assert configs["transaction.state.log.min.isr"].value == "2"
    assert configs["min.insync.replicas"].value == "2"


def test_acks_all_producer_rides_out_a_killed_node_which_rejoins_the_isr(
    cluster: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = cluster
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"isr-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=3, replication=3)
    before = [f"before {i}".encode() for i in range(50)]
    produce(bootstrap, topic, before)

    victim = recorded(state_dir)["kafka-2"]
    control.stop(state_dir, "kafka", node=2, kill=True)
    assert gone(*victim) and "kafka-2" not in recorded(state_dir)
    # Two of three in sync satisfy min ISR 2: acks=all writes go on (once the controller fences
    # the dead node, after its 4 s session, the ISRs shrink to two).
    during = [f"during {i}".encode() for i in range(50)]
    produce(bootstrap, topic, during, timeout_s=90)
    assert wait_until(lambda: isr_sizes(admin, topic) == [2, 2, 2], 30, interval=0.5)

    t0 = time.monotonic()
    control.start(state_dir, "kafka", node=2)
    assert pid_alive(*recorded(state_dir)["kafka-2"])
    assert wait_until(lambda: isr_sizes(admin, topic) == [3, 3, 3], 60, interval=0.5), isr_sizes(admin, topic)
    print(f"node 2 back in every ISR {time.monotonic() - t0:.1f}s after its start began")

    got = read_back(bootstrap, topic, 3, expect=100)
    assert sorted(got) == sorted(before + during)


def test_cluster_dev_down_leaves_no_recorded_pid(cluster: tuple[Path, dict[str, str]]) -> None:
    state_dir, _ = cluster
    control.freeze(state_dir, "kafka", node=3)  # a frozen node must not hold `down` up
    pids = recorded(state_dir)
    assert len(pids) == 3
    workdirs = [n["workdir"] for n in json.loads((state_dir / "state.json").read_text())["components"]["kafka"]["nodes"]]
    down = cli("down", state_dir=state_dir, timeout=120)
    assert down.returncode == 0, down.stderr
    for name, (pid, ticks) in pids.items():
        assert wait_until(lambda p=pid, t=ticks: gone(p, t), 10), f"{name} (pid {pid}) left behind"
    assert not any(Path(w).exists() for w in workdirs)


def test_a_halted_servers_folder_survives_the_sweep_of_stale_ones(tmp_path: Path) -> None:
    """Any server's start sweeps folders whose server is dead: not one stopped on purpose."""
    dead_pid = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout)
    folders = {name: tmp_path / f"devstack-kafka-{name}" for name in ("crashed", "kept", "detached", "orphaned")}
    for folder in folders.values():
        folder.mkdir()
    record_owner(folders["crashed"], dead_pid, None)
    record_halted(folders["kept"], detached=False)  # held by this (live) process
    record_halted(folders["detached"], detached=True)  # dev up's: kept until dev down
    (folders["orphaned"] / OWNER_FILE).write_text(json.dumps(
        {"halted": True, "holder": {"pid": dead_pid, "start_ticks": None}}))

    removed = sweep_stale_workdirs("devstack-kafka-", tmp_path)
    assert sorted(removed) == sorted([folders["crashed"], folders["orphaned"]])
    assert folders["kept"].is_dir() and folders["detached"].is_dir()
