"""The local stack (devstack): a real Kafka 4.1 broker, PostgreSQL, moto S3, the CLI.

The component tests run against the local processes even when the session's endpoints come
from the environment or from testcontainers (they then start their own), since what they
check is this code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from devstack import kafka as devkafka
from devstack.kafka import KafkaBroker
from devstack.postgres import PostgresCluster
from devstack.procs import (
    DevStackError,
    pid_alive,
    process_group_members,
    wait_until,
)
from devstack.procs import die_with_parent_fn as die_with_parent
from devstack.s3 import S3Endpoint, s3_client
from devstack.server import sweep_stale_workdirs
from devstack.stack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------- helpers

def _local(stack: Any, name: str, get: str, factory: type) -> Iterator[Any]:
    getattr(stack, get)()  # the session's own, if it is the local one
    component = stack.local(name)
    if component is not None:
        yield component
        return
    component = factory()
    try:
        yield component.start()
    finally:
        component.stop()


@pytest.fixture(scope="module")
def local_kafka(stack: Any) -> Iterator[KafkaBroker]:
    yield from _local(stack, "kafka", "kafka_bootstrap", KafkaBroker)


@pytest.fixture(scope="module")
def local_postgres(stack: Any) -> Iterator[PostgresCluster]:
    yield from _local(stack, "postgres", "database_url", PostgresCluster)


@pytest.fixture(scope="module")
def local_s3(stack: Any) -> Iterator[S3Endpoint]:
    yield from _local(stack, "s3", "s3", S3Endpoint)


def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=30)
    for future in futures.values():
        future.result(timeout=30)


def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                records.append(msg)
        return records
    finally:
        consumer.close()


def process_gone(pid: int, ticks: int | None = None) -> bool:
    return not pid_alive(pid, ticks) and not process_group_members(pid)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------------------- Kafka

def test_kafka_produce_consume_round_trip(local_kafka: KafkaBroker) -> None:
    bootstrap = local_kafka.bootstrap_servers
    topic = f"t{uuid.uuid4().hex[:10]}.roundtrip"
    create_topics(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    delivered: list[Any] = []
    sent = [(f"k{i}".encode(), f"value {i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value, headers={"ce_id": key},
                         on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(30) == 0
    assert len(delivered) == 20 and all(not isinstance(d, Exception) and d.error() is None for d in delivered)

    records = read_all(bootstrap, topic, expect=20)
    assert [(m.key(), m.value()) for m in records] == sent
    assert [dict(m.headers())["ce_id"] for m in records] == [k for k, _ in sent]


def test_kafka_broker_settings_and_start_time(local_kafka: KafkaBroker) -> None:
    assert local_kafka.start_seconds is not None and local_kafka.start_seconds > 0
    assert local_kafka.ping()
    admin = AdminClient({"bootstrap.servers": local_kafka.bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["offsets.topic.num.partitions"].value == "4"
    assert configs["group.initial.rebalance.delay.ms"].value == "0"
    assert configs["auto.create.topics.enable"].value == "true"
    assert configs["num.partitions"].value == "1"
    # Its own session: a Ctrl-C in the terminal does not reach it behind our back.
    assert os.getsid(local_kafka.pid) == local_kafka.pid


def test_kafka_start_failure_names_the_cause_and_cleans_up() -> None:
    broker = KafkaBroker(extra_props={"num.network.threads": "not-a-number"})
    with pytest.raises(DevStackError) as info:
        broker.start(timeout=60)
    message = str(info.value)
    assert "num.network.threads" in message  # from the log tail (or StorageTool's output)
    assert broker.pid is None and broker.workdir is None


def test_jar_cache_marker(tmp_path: Path) -> None:
    pom_hash = devkafka._pom_hash()
    jars = tmp_path / "kafka-jars"
    assert not devkafka._jars_complete(jars, pom_hash)
    jars.mkdir()
    (jars / "a.jar").write_bytes(b"x")
    (jars / devkafka.MARKER).write_text(json.dumps({"pom_sha256": pom_hash, "jars": ["a.jar"]}))
    assert devkafka._jars_complete(jars, pom_hash)
    assert not devkafka._jars_complete(jars, "another-pom")
    (jars / "a.jar").unlink()
    assert not devkafka._jars_complete(jars, pom_hash)
    # The real cache that the session's broker uses is complete.
    real = devkafka.ensure_kafka_jars(REPO_ROOT)
    assert devkafka._jars_complete(real, pom_hash)
    assert any(p.name == f"kafka_2.13-{devkafka.KAFKA_VERSION}.jar" for p in real.iterdir())


def test_random_cluster_id_is_kafka_shaped() -> None:
    ids = {devkafka.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


# ---------------------------------------------------------------------------- PostgreSQL

def test_postgres_answers_and_does_not_run_as_root(local_postgres: PostgresCluster) -> None:
    import psycopg

    with psycopg.connect(local_postgres.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == ("compute",)
    assert local_postgres.workdir is not None and local_postgres.pid is not None
    uid_line = next(line for line in Path(f"/proc/{local_postgres.pid}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) != {"0"}, uid_line
    if os.geteuid() == 0:
        owners = {p.stat().st_uid for p in local_postgres.datadir.rglob("*")}
        owners.add(local_postgres.datadir.stat().st_uid)
        assert 0 not in owners


def test_database_url_fixture(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------------- S3

def test_s3_put_get(local_s3: S3Endpoint) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(bucket)
    local_s3.create_bucket(bucket)  # idempotent
    client = local_s3.client()
    client.put_object(Bucket=bucket, Key="results/one.png", Body=b"\x89PNG...", ContentType="image/png")
    got = client.get_object(Bucket=bucket, Key="results/one.png")
    assert got["Body"].read() == b"\x89PNG..."
    assert got["ContentType"] == "image/png"


def test_s3_fixture(s3_config: Any, s3_endpoint_url: str) -> None:
    client = s3_config.client()
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert s3_endpoint_url == s3_config.endpoint_url


def test_results_dir_fixture(results_dir: Path, results_url: str) -> None:
    assert results_dir.is_dir() and not any(results_dir.iterdir())
    assert results_url.startswith("file:///") and results_url.endswith("/results")


# ---------------------------------------------------------------------------- no orphans

def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    """A test run that is SIGKILLed leaves no server behind (parent-death signal)."""
    script = textwrap.dedent("""
        import json, sys, time
        from devstack.postgres import PostgresCluster
        from devstack.s3 import S3Endpoint
        pg = PostgresCluster().start()  # default base (/tmp): `nobody` must reach it, tmp_path is 0700
        s3 = S3Endpoint(base_dir=sys.argv[1]).start()
        print(json.dumps({"pids": [[pg.pid, pg.start_ticks], [s3.pid, s3.start_ticks]],
                          "pg_workdir": str(pg.workdir)}), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    started: dict[str, Any] = {"pids": []}
    try:
        started = json.loads(parent.stdout.readline())  # type: ignore[union-attr]
        assert all(pid_alive(pid, ticks) for pid, ticks in started["pids"])
    finally:
        parent.kill()
        parent.wait()
        if started.get("pg_workdir"):
            wait_until(lambda: process_gone(*started["pids"][0]), 30)
            sweep_stale_workdirs("devstack-postgres-")
            shutil.rmtree(started["pg_workdir"], ignore_errors=True)  # if the assert below fails
    pids = started["pids"]
    assert wait_until(lambda: all(process_gone(pid, ticks) for pid, ticks in pids), 30), pids
    # Nobody was left to remove their temp dirs; the next start of a component sweeps them.
    assert sweep_stale_workdirs("devstack-s3-", tmp_path) and not list(tmp_path.glob("devstack-s3-*"))


def test_postgres_refuses_a_base_dir_nobody_can_enter(tmp_path: Path) -> None:
    import pwd

    from devstack.postgres import _blocking_parent

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    assert _blocking_parent(locked, nobody) is not None
    assert _blocking_parent(Path(tempfile.gettempdir()), nobody) is None
    if os.geteuid() == 0:  # only root hands the cluster to another account
        with pytest.raises(DevStackError, match="cannot enter"):
            PostgresCluster(base_dir=locked).start()


# ---------------------------------------------------------------------------- CLI

def test_cli_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {"COMPUTE_DEVSTACK_STATE_DIR": str(state_dir)}
    up = cli("up", "--json", env=env)
    try:
        assert up.returncode == 0, up.stderr
        endpoints = json.loads(up.stdout)
        assert set(endpoints) >= {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "S3_ENDPOINT_URL",
                                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                  "RESULTS_URL", "INPUT_ALLOWED_FILE_ROOTS"}
        assert Path(endpoints["INPUT_ALLOWED_FILE_ROOTS"]).is_dir()  # file:// inputs: this folder
        state = json.loads((state_dir / "state.json").read_text())
        recorded = [(c["pid"], c["start_ticks"], c["workdir"]) for c in state["components"].values()]
        assert len(recorded) == 3
        # The `up` process has exited; its servers live on, each in a session of its own.
        for pid, ticks, _ in recorded:
            assert pid_alive(pid, ticks) and os.getsid(pid) == pid

        status = cli("status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["up"] is True

        # The endpoints work.
        import psycopg

        with psycopg.connect(endpoints["DATABASE_URL"]) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        s3_client(endpoints["S3_ENDPOINT_URL"]).list_buckets()
        assert devkafka.metadata_round_trip(endpoints["KAFKA_BOOTSTRAP_SERVERS"])

        shell = cli("env", env=env)
        assert f"export KAFKA_BOOTSTRAP_SERVERS={endpoints['KAFKA_BOOTSTRAP_SERVERS']}" in shell.stdout

        again = cli("up", env=env)
        assert again.returncode != 0 and "already up" in again.stderr
    finally:
        down = cli("down", env=env)
    assert down.returncode == 0, down.stderr
    for pid, ticks, workdir in recorded:
        assert wait_until(lambda p=pid, t=ticks: process_gone(p, t), 10), f"pid {pid} left behind"
        assert not Path(workdir).exists()
    assert not (state_dir / "state.json").exists()
    assert not Path(endpoints["RESULTS_URL"].removeprefix("file://")).exists()
    assert not Path(endpoints["INPUT_ALLOWED_FILE_ROOTS"]).exists()
    after = cli("status", env=env)
    assert after.returncode == 1 and "no local stack is up" in after.stdout


def test_cli_run_passes_endpoints_and_stops(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    code = textwrap.dedent(f"""
        import json, os
        json.dump({{k: os.environ.get(k) for k in ("DATABASE_URL", "S3_ENDPOINT_URL", "RESULTS_URL",
                   "KAFKA_BOOTSTRAP_SERVERS")}}, open({str(out)!r}, "w"))
        raise SystemExit(3)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "S3_ENDPOINT_URL")}
    proc = subprocess.run([sys.executable, "-m", "devstack.cli", "run", "--no-kafka", "--",
                           sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    seen = json.loads(out.read_text())
    assert seen["DATABASE_URL"].startswith("postgresql://") and seen["S3_ENDPOINT_URL"].startswith("http://")
    assert seen["RESULTS_URL"].startswith("file://")
    assert seen["KAFKA_BOOTSTRAP_SERVERS"] == os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    port = seen["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0]
    assert not any(f"-p {port} " in _cmdline(p) for p in _all_pids()), "postgres left behind"


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------- Faust on Kafka 4.1

FAUST_APP = '''
import os

import faust

prefix = os.environ["TEST_TOPIC_PREFIX"]
app = faust.App(
    f"{prefix}-upper",
    broker="kafka://" + os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    store="memory://",
    topic_partitions=1,
    web_enabled=False,
    datadir=os.environ["TEST_FAUST_DATADIR"],
)
source = app.topic(f"{prefix}.in", value_type=bytes, value_serializer="raw")
sink = app.topic(f"{prefix}.out", value_type=bytes, value_serializer="raw")


@app.agent(source)
async def upper(stream):
    async for value in stream:
        await sink.send(key=b"k", value=value.upper())


if __name__ == "__main__":
    app.main()
'''


def test_faust_app_end_to_end(kafka_bootstrap: str, kafka_settings: Any, tmp_path: Path) -> None:
    prefix = kafka_settings.topic_prefix
    create_topics(kafka_bootstrap, f"{prefix}.in", f"{prefix}.out")
    app_file = tmp_path / "upper_app.py"
    app_file.write_text(FAUST_APP)
    log = tmp_path / "worker.log"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEST_TOPIC_PREFIX": prefix,
           "TEST_FAUST_DATADIR": str(tmp_path / "faust-data")}
    with open(log, "wb") as log_file:
        worker = subprocess.Popen([sys.executable, str(app_file), "worker", "-l", "info", "--without-web"],
                                  cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=die_with_parent())
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
        sent = [f"hello {i}".encode() for i in range(10)]
        for value in sent:
            producer.produce(f"{prefix}.in", value=value)
        assert producer.flush(30) == 0

        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{prefix}-check",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(f"{prefix}.out", 0, OFFSET_BEGINNING)])
        got: list[bytes] = []
        deadline = time.monotonic() + 120
        try:
            while len(got) < len(sent) and time.monotonic() < deadline and worker.poll() is None:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    got.append(msg.value())
        finally:
            consumer.close()
        assert got == [v.upper() for v in sent], (
            f"worker exit={worker.poll()} got={got}\n{log.read_text()[-4000:]}")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert worker.returncode == 0, log.read_text()[-4000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def test_the_stacks_own_results_folder_is_not_fsynced_a_given_one_is(tmp_path: Path) -> None:
    """A folder `dev down` deletes needs no fsync (RESULTS_FSYNC=false); a kept one does."""
    own = LocalStack(kafka=False, postgres=False, s3=False, base_dir=tmp_path).start()
    try:
        env = own.env()
        assert env["RESULTS_FSYNC"] == "false" and env["RESULTS_URL"].startswith("file:///")
    finally:
        own.stop()
    kept = LocalStack(kafka=False, postgres=False, s3=False, results_dir=tmp_path / "kept").start()
    try:
        assert "RESULTS_FSYNC" not in kept.env()
    finally:
        kept.stop()
    assert (tmp_path / "kept").is_dir()
