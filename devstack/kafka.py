"""A real Apache Kafka broker as a local JVM process: KRaft, one combined broker+controller.

The jars come from Maven Central through ``pom.xml`` beside this file and are cached in
``<repo>/.cache/kafka-jars`` (see :func:`ensure_kafka_jars`). :class:`KafkaBroker` formats a
fresh log directory with ``kafka.tools.StorageTool``, starts ``kafka.Kafka`` on two free ports of
127.0.0.1 and returns once a metadata round trip through confluent-kafka succeeds.

Resolve the jars up front (the Makefile does)::

    python -m devstack.kafka --resolve-jars
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from devstack.procs import (
    DevStackError,
    free_ports,
    port_open,
    proc_start_ticks,
    run_checked,
    spawn,
    tail,
    wait_until,
)
from devstack.server import ServerProcess, record_owner, sweep_stale_workdirs

HERE = Path(__file__).resolve().parent
POM_PATH = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
JARS_DIRNAME = "kafka-jars"
MARKER = ".resolved.json"
KAFKA_VERSION = "4.1.1"

# Broker settings suited to tests on a small machine. The rest are Kafka's defaults
# (log.flush.* included: the OS page cache decides, as in production).
TEST_BROKER_PROPS: dict[str, str] = {
    # Convenient for tools and ad-hoc clients; our code still creates its topics explicitly
    # (``computectl topics create``) with the partitions and configs it wants.
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    # The group coordinator loads every __consumer_offsets partition at startup: 4, not 50.
    "offsets.topic.num.partitions": "4",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # The first consumer of a group gets its assignment at once, not after 3 s.
    "group.initial.rebalance.delay.ms": "0",
    # A broker restarted after a crash (SIGKILL) cannot register until the controller fences its
    # old incarnation when its session times out: 9 s by default, 4 s here (measured: a killed
    # broker answered again 15 s after its restart began, ~10 s with this). It also shortens
    # how long a dead node of a cluster stays in the ISRs. Heartbeats every 500 ms keep a live
    # broker far from the deadline even on a loaded 2-core machine.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "4000",
    "num.network.threads": "2",
    "num.io.threads": "4",
    # Workers (issue 15, item 3; gpu_consumers/group_protocol.py): KIP-848 groups may set their
    # own session timeout down to 10 s (the broker's floor is 45 s), so a dead worker's
    # partitions move within ~10 s.
    "group.consumer.min.session.timeout.ms": "10000",
    # ... and heartbeat every third of it (3.3 s), not every 5 s (the broker's floor and default):
    # with 5 s, one late heartbeat on a loaded machine fenced both workers of a backlog run.
    "group.consumer.min.heartbeat.interval.ms": "1000",
}

DEFAULT_HEAP_MB = 1024


def jvm_opts(heap_mb: int = DEFAULT_HEAP_MB) -> list[str]:
    """The broker's JVM options; ``heap_mb`` is smaller for each node of a cluster."""
    return [
        # A fixed heap, as Kafka's operations guide asks (-Xms = -Xmx): a heap that starts small
        # grows by full collections, and the first of them stopped the broker for ~120-150 ms
        # about 20 s after it started, in the middle of whatever the tests were timing.
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        # Half of it young: the broker makes ~70 MB of short-lived garbage a second under load
        # (bench/bench_api_latency.py); with a 35 MB eden that was a 10-12 ms pause twice a
        # second, with 512 MB one pause every ~6 s. The log-cleaner buffer lives in the old half.
        f"-Xmn{heap_mb // 2}m",
        # Class metadata grows past the default 21 MB threshold at start: two full collections
        # (~75 ms) before the broker answers. Start with room for it.
        "-XX:MetaspaceSize=128m",
        # Two cores: a single-threaded collector leaves the CPU to the broker and the tests.
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
    ]


# StorageTool runs for a second: no optimizing compiler, small heap.
TOOL_JVM_OPTS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]


def default_repo_root() -> Path:
    """The checkout this package lives in (``COMPUTE_REPO_ROOT`` overrides it)."""
    env = os.environ.get("COMPUTE_REPO_ROOT")
    if env:
        return Path(env).resolve()
    candidate = HERE.parents[0]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def _pom_hash() -> str:
    h = hashlib.sha256(POM_PATH.read_bytes())
    return h.hexdigest()


def _jars_complete(jars_dir: Path, pom_hash: str) -> bool:
    try:
        marker = json.loads((jars_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("pom_sha256") != pom_hash:
        return False
    jars = marker.get("jars") or []
    return bool(jars) and all((jars_dir / name).is_file() for name in jars)


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise DevStackError(f"{name!r} is not on PATH: {hint}")
    return path


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _tool("java", "install a JDK 17 or newer (e.g. apt-get install openjdk-17-jre-headless)")


def ensure_kafka_jars(repo_root: Path | str | None = None, *, timeout: float = 900.0) -> Path:
    """The folder of Kafka's runtime jars, resolved with Maven only when missing or stale.

    The cache (``<repo>/.cache/kafka-jars``) carries a marker with the SHA-256 of ``pom.xml``
    and the list of jars; anything else (no marker, another hash, a jar missing) resolves
    again into a fresh folder that replaces the old one. A file lock makes concurrent callers
    wait for one resolution.
    """
    root = Path(repo_root) if repo_root is not None else default_repo_root()
    cache = root / ".cache"
    jars_dir = cache / JARS_DIRNAME
    pom_hash = _pom_hash()
    if _jars_complete(jars_dir, pom_hash):
        return jars_dir
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{JARS_DIRNAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _jars_complete(jars_dir, pom_hash):  # another process resolved them meanwhile
            return jars_dir
        mvn = _tool("mvn", "install Maven 3 (e.g. apt-get install maven)")
        staging = Path(tempfile.mkdtemp(prefix=f"{JARS_DIRNAME}.", dir=cache))
        try:
            run_checked(
                [
                    mvn, "-q", "-B", "-f", str(POM_PATH),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                ],
                what="resolving the Kafka jars from Maven Central",
                timeout=timeout,
            )
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if not any(n.startswith(f"kafka_2.13-{KAFKA_VERSION}") for n in jars):
                raise DevStackError(f"Maven finished but kafka_2.13-{KAFKA_VERSION}.jar is not in {staging}")
            (staging / MARKER).write_text(json.dumps({"pom_sha256": pom_hash, "jars": jars}, indent=1))
            if jars_dir.exists():
                shutil.rmtree(jars_dir)
            staging.rename(jars_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return jars_dir


def random_cluster_id() -> str:
    """What ``kafka-storage random-uuid`` prints (base64url of 16 random bytes), without a JVM."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        # Kafka reserves the all-zero and the metadata-topic (…01) ids and avoids a leading '-'.
        if not text.startswith("-") and int.from_bytes(raw, "big") > 1:
            return text


def metadata_round_trip(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker at ``bootstrap`` answers a metadata request listing a broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({
        "bootstrap.servers": bootstrap,
        "log_level": 0,  # no "connection refused" noise while it boots
        "reconnect.backoff.max.ms": 200,
        "socket.timeout.ms": int(timeout * 1000),
    })
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException: not up yet
        return False
    return bool(md.brokers)


class KafkaBroker(ServerProcess):
    """One KRaft node (``process.roles=broker,controller``) on 127.0.0.1.

    ``start()`` picks two free ports (client, controller) unless given, formats a log
    directory in a fresh temp dir, starts the JVM and waits until a metadata round trip
    succeeds. ``stop()`` sends SIGTERM (controlled shutdown), SIGKILL after a deadline, and
    removes the temp dir. The broker's log is ``<workdir>/server.log`` (log4j, WARN) and
    ``<workdir>/kafka.out`` (the JVM's stdout/stderr).
    """

    def __init__(
        self,
        *,
        repo_root: Path | str | None = None,
        jars_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        extra_props: dict[str, str] | None = None,
        detached: bool = False,
        base_dir: Path | str | None = None,
        node_id: int = 1,
        quorum: dict[int, int] | None = None,
        cluster_id: str | None = None,
        heap_mb: int = DEFAULT_HEAP_MB,
    ) -> None:
        self.repo_root = Path(repo_root) if repo_root is not None else default_repo_root()
        self.jars_dir = jars_dir
        self.port = port
        self.controller_port = controller_port
        self.extra_props = dict(extra_props or {})
        # A node of a cluster (kafka_cluster.py): its id, every controller's port by node id
        # (the static quorum) and the cluster id all nodes are formatted with.
        self.node_id = node_id
        self.quorum = dict(quorum) if quorum else None
        self.cluster_id = cluster_id
        self.heap_mb = heap_mb
        super().__init__(detached=detached, base_dir=base_dir)
        self.format_seconds: float | None = None
        self._java = ""

    # ------------------------------------------------------------------ endpoints
    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise DevStackError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def server_log(self) -> Path | None:
        return self.workdir / "server.log" if self.workdir else None

    def properties(self) -> dict[str, str]:
        assert self.workdir is not None and self.port and self.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{node}@{self.host}:{port}"
                for node, port in sorted((self.quorum or {self.node_id: self.controller_port}).items())
            ),
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            **TEST_BROKER_PROPS,
        }
        props.update(self.extra_props)
        return props

    def _log_tail(self) -> str:
        assert self.workdir is not None
        return (
            f"--- {self.workdir / 'server.log'} (tail) ---\n{tail(self.workdir / 'server.log')}\n"
            f"--- {self.workdir / 'kafka.out'} (tail) ---\n{tail(self.workdir / 'kafka.out')}"
        )

    # ------------------------------------------------------------------ lifecycle
    START_TIMEOUT_S = 120.0
    # start() (ServerProcess): returns once a metadata round trip succeeds.

    def prepare(self, timeout: float = 120.0) -> None:
        """Jars, ports, temp dir, server.properties and ``StorageTool format`` (no server yet).

        Thread-safe; the caller runs stop() if it raises.
        """
        if self.pid is not None or self.workdir is not None:
            raise DevStackError("the broker is already started")
        self._t0 = time.monotonic()
        self.jars_dir = self.jars_dir or ensure_kafka_jars(self.repo_root)
        self._java = java_executable()
        if self.port is None or self.controller_port is None:
            self.port, self.controller_port = free_ports(2)
        sweep_stale_workdirs("devstack-kafka-", self.base_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix="devstack-kafka-", dir=self.base_dir))
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        run_checked(
            [self._java, *TOOL_JVM_OPTS, *self._jvm_common(), "kafka.tools.StorageTool", "format",
             "-t", self.cluster_id or random_cluster_id(), "-c", str(config)],
            what="formatting the Kafka log directory (kafka.tools.StorageTool format)",
            timeout=max(30.0, timeout / 2),
        )
        self.format_seconds = time.monotonic() - self._t0

    def _jvm_common(self) -> list[str]:
        return [
            f"-Dkafka.logs.dir={self.workdir}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{self.jars_dir}/*",
        ]

    def launch(self) -> None:
        """Start the JVM. Call it from the thread that will outlive the broker (the main
        thread): the parent-death signal fires when the thread that spawned the child exits."""
        assert self.workdir is not None, "prepare() first"
        # resume() of a broker read back from dev up's records: prepare() did not run here.
        self._java = self._java or java_executable()
        self.jars_dir = self.jars_dir or ensure_kafka_jars(self.repo_root)
        self._proc = spawn(
            [self._java, *jvm_opts(self.heap_mb), *self._jvm_common(), "kafka.Kafka", str(self.workdir / "server.properties")],
            log_path=self.workdir / "kafka.out",
            detached=self.detached,
            cwd=self.workdir,
        )
        self.pid = self._proc.pid
        self.start_ticks = proc_start_ticks(self.pid)
        record_owner(self.workdir, self.pid, self.start_ticks)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until a metadata round trip succeeds; raise with the log tail if the JVM
        exits or ``timeout`` (counted from prepare()) passes. Thread-safe."""

        def exited() -> str | None:
            if self._cancelled.is_set():
                return "start cancelled"
            code = self._proc.poll()
            if code is None:
                return None
            return f"the Kafka broker exited with code {code} while starting\n{self._log_tail()}"

        remaining = max(1.0, timeout - (time.monotonic() - self._t0))
        ready = wait_until(
            lambda: port_open(self.host, self.port or 0) and metadata_round_trip(self.bootstrap_servers),
            remaining,
            interval=0.1,
            abort=exited,
        )
        if not ready:
            raise DevStackError(
                f"the Kafka broker at {self.bootstrap_servers} did not answer a metadata request "
                f"within {timeout:.0f}s\n{self._log_tail()}"
            )
        self.start_seconds = time.monotonic() - self._t0

    def cancel(self) -> None:
        """Make a wait_ready() in another thread give up at its next poll."""
        self._cancelled.set()

    def ping(self, timeout: float = 2.0) -> bool:
        return self.port is not None and metadata_round_trip(self.bootstrap_servers, timeout)

    # stop(): controlled shutdown (SIGTERM), SIGKILL after the timeout, then the temp dir goes.

    # ------------------------------------------------------------------ state (dev up/down)
    def to_state(self) -> dict[str, Any]:
        return {
            **self._process_state(),
            "port": self.port,
            "controller_port": self.controller_port,
            "bootstrap_servers": self.bootstrap_servers if self.port else None,
            "start_seconds": self.start_seconds,
            "node_id": self.node_id,
            "heap_mb": self.heap_mb,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KafkaBroker:
        broker = cls(port=state.get("port"), controller_port=state.get("controller_port"), detached=True,
                     node_id=state.get("node_id", 1), heap_mb=state.get("heap_mb", DEFAULT_HEAP_MB))
        broker.pid = state.get("pid")
        broker.start_ticks = state.get("start_ticks")
        broker.workdir = Path(state["workdir"]) if state.get("workdir") else None
        broker.start_seconds = state.get("start_seconds")
        return broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.kafka",
        description="Resolve the Kafka jars into the cache, or start a throw-away broker and time it.",
    )
    parser.add_argument("--resolve-jars", action="store_true",
                        help="resolve the jars from Maven Central (only if the cache is stale) and print their folder")
    parser.add_argument("--time-start", action="store_true",
                        help="start a broker, print its start time as JSON, stop it")
    parser.add_argument("--repo-root", type=Path, default=None, help="where .cache/ lives (default: this checkout)")
    args = parser.parse_args(argv)
    if not (args.resolve_jars or args.time_start):
        parser.error("nothing to do: give --resolve-jars and/or --time-start")
    try:
        if args.resolve_jars:
            print(ensure_kafka_jars(args.repo_root))
        if args.time_start:
            broker = KafkaBroker(repo_root=args.repo_root)
            with contextlib.ExitStack() as stack:
                stack.enter_context(broker)
                print(json.dumps({
                    "kafka_version": KAFKA_VERSION,
                    "bootstrap_servers": broker.bootstrap_servers,
                    "format_seconds": round(broker.format_seconds or 0, 3),
                    "start_seconds": round(broker.start_seconds or 0, 3),
                }))
    except DevStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
