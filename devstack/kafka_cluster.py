"""A KRaft cluster of several local Kafka nodes (``computectl dev up --brokers 3``).

Each node is a :class:`~devstack.kafka.KafkaBroker` in a JVM of its own, with its own
ports and log directory, and runs both roles (``process.roles=broker,controller``): three nodes
make a controller quorum of three (static ``controller.quorum.voters``), which survives one
node down. Every node is formatted with the same cluster id before any starts, and they are
launched together: a node answers metadata only once a quorum of controllers has elected a
leader.

The cluster's defaults follow its size (:func:`replication_props`): replication factor
``min(3, n)`` and ``min.insync.replicas`` one less (at least 1) for auto-created topics and
the internal ones (``__consumer_offsets``, the transaction state log, the share-group state).
Topics created by ``computectl topics create`` take theirs from ``KAFKA_REPLICATION_FACTOR`` /
``KAFKA_MIN_INSYNC_REPLICAS``, which :meth:`KafkaCluster.env` sets to the same values.

Faults (the same as a single broker's, per node; see server.py): ``node(n).halt(kill=...)``,
``node(n).resume()``, ``node(n).freeze()`` / ``thaw()``; the whole cluster: :meth:`halt`,
:meth:`resume`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack.kafka import KafkaBroker, metadata_round_trip, random_cluster_id
from devstack.procs import DevStackError, free_ports, wait_until

# Three JVMs on a small machine (2 cores, a few GiB spare): a small fixed heap each. The
# broker's own use at test load is well under 200 MB.
CLUSTER_HEAP_MB = 384


def replication_props(brokers: int) -> dict[str, str]:
    """Broker defaults for a cluster of ``brokers`` nodes: RF min(3, n), min ISR RF-1 (>= 1)."""
    rf = min(3, brokers)
    min_isr = max(1, rf - 1)
    return {
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min_isr),
    }


def topic_env(brokers: int) -> dict[str, str]:
    """The settings ``computectl topics create`` (schemas/kafka_settings.py) reads."""
    props = replication_props(brokers)
    return {
        "KAFKA_REPLICATION_FACTOR": props["default.replication.factor"],
        "KAFKA_MIN_INSYNC_REPLICAS": props["min.insync.replicas"],
    }


class KafkaCluster:
    """``brokers`` combined broker+controller nodes on 127.0.0.1, node ids 1..n."""

    START_TIMEOUT_S = 180.0

    def __init__(
        self,
        brokers: int = 3,
        *,
        repo_root: Path | str | None = None,
        detached: bool = False,
        base_dir: Path | str | None = None,
        heap_mb: int = CLUSTER_HEAP_MB,
        extra_props: dict[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise DevStackError(f"a cluster needs at least one broker, not {brokers}")
        self.brokers = brokers
        self.cluster_id: str | None = None
        self.start_seconds: float | None = None
        props = {**replication_props(brokers), **(extra_props or {})}
        self.nodes = [
            KafkaBroker(repo_root=repo_root, detached=detached, base_dir=base_dir, node_id=i + 1,
                        heap_mb=heap_mb, extra_props=props)
            for i in range(brokers)
        ]

    def node(self, node_id: int) -> KafkaBroker:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise DevStackError(f"no Kafka node {node_id}: the cluster's nodes are 1..{self.brokers}")

    # ------------------------------------------------------------------ endpoints
    @property
    def bootstrap_servers(self) -> str:
        """Every node, so a client still finds the cluster with one node down."""
        return ",".join(n.bootstrap_servers for n in self.nodes)

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, **topic_env(self.brokers)}

    @property
    def pid(self) -> int | None:
        """The first running node's pid (LocalStack.status lists every node)."""
        return next((n.pid for n in self.nodes if n.pid is not None), None)

    # ------------------------------------------------------------------ lifecycle
    def _each(self, fn: Callable[[KafkaBroker], Any], what: str, nodes: list[KafkaBroker] | None = None) -> None:
        nodes = self.nodes if nodes is None else nodes
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix=f"kafka-{what}") as pool:
            futures = {n.node_id: pool.submit(fn, n) for n in nodes}
            for node_id, future in futures.items():
                exc = future.exception()
                if exc is not None:
                    errors.append(f"node {node_id}: {exc}")
        if errors:
            raise DevStackError(f"the Kafka cluster ({what}):\n" + "\n".join(errors))

    def prepare(self, timeout: float = START_TIMEOUT_S) -> None:
        """Every node's ports (all chosen first: each node's config names every controller),
        one cluster id, and every log directory formatted (in parallel)."""
        ports = free_ports(2 * self.brokers)
        self.cluster_id = random_cluster_id()
        quorum = {n.node_id: ports[2 * i + 1] for i, n in enumerate(self.nodes)}
        for i, n in enumerate(self.nodes):
            n.port, n.controller_port = ports[2 * i], ports[2 * i + 1]
            n.quorum, n.cluster_id = quorum, self.cluster_id
        self._each(lambda n: n.prepare(timeout), "format")

    def launch(self) -> None:
        for n in self.nodes:
            n.launch()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Every node answers metadata, and the metadata lists every node."""
        self._each(lambda n: n.wait_ready(timeout), "start")
        if not wait_until(self._all_registered, timeout, interval=0.2):
            raise DevStackError(f"the Kafka cluster at {self.bootstrap_servers} did not list all "
                                f"{self.brokers} brokers within {timeout:.0f}s")
        self.start_seconds = max(n.start_seconds or 0.0 for n in self.nodes)

    def _all_registered(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        try:
            return len(admin.list_topics(timeout=2).brokers) == self.brokers
        except KafkaException:  # not up yet
            return False

    def start(self, timeout: float | None = None) -> KafkaCluster:
        timeout = self.START_TIMEOUT_S if timeout is None else timeout
        try:
            self.prepare(timeout)
            self.launch()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def cancel(self) -> None:
        for n in self.nodes:
            n.cancel()

    def ping(self, timeout: float = 2.0) -> bool:
        return any(n.port is not None for n in self.nodes) and metadata_round_trip(self.bootstrap_servers, timeout)

    def is_alive(self) -> bool:
        """Every node runs (a node stopped on purpose makes the cluster not whole)."""
        return all(n.is_alive() for n in self.nodes)

    def stop(self, timeout: float = 30.0, *, keep_files: bool = False) -> None:
        """Stop every node (in parallel: a controlled shutdown waits on the quorum) and remove
        their folders unless ``keep_files``."""
        self._each(lambda n: n.stop(timeout, keep_files=keep_files), "stop")

    # ------------------------------------------------------------------ faults
    def halt(self, timeout: float = 30.0, *, kill: bool = False) -> None:
        """Stop every node, keep the data (see ServerProcess.halt)."""
        self._each(lambda n: n.halt(timeout, kill=kill), "halt")

    def resume(self, timeout: float | None = None) -> None:
        """Start every stopped node again on its data; they start together (the quorum)."""
        timeout = self.START_TIMEOUT_S if timeout is None else timeout
        stopped = [n for n in self.nodes if not n.is_alive()]
        if not stopped:
            return
        for n in stopped:  # launched from this thread (the parent-death signal), waited in parallel
            n.relaunch()
        self._each(lambda n: n.wait_ready(timeout), "resume", stopped)
        if not wait_until(self._all_registered, timeout, interval=0.2):
            raise DevStackError(f"the Kafka cluster did not list all {self.brokers} brokers within {timeout:.0f}s")

    def restart(self, timeout: float | None = None, *, kill: bool = False) -> None:
        self.halt(kill=kill)
        self.resume(timeout)

    # ------------------------------------------------------------------ state (dev up/down)
    def to_state(self) -> dict[str, Any]:
        return {
            "brokers": self.brokers,
            "cluster_id": self.cluster_id,
            "bootstrap_servers": self.bootstrap_servers if all(n.port for n in self.nodes) else None,
            "start_seconds": self.start_seconds,
            "nodes": [n.to_state() for n in self.nodes],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KafkaCluster:
        cluster = cls.__new__(cls)
        cluster.nodes = [KafkaBroker.from_state(n) for n in state["nodes"]]
        cluster.brokers = len(cluster.nodes)
        cluster.cluster_id = state.get("cluster_id")
        cluster.start_seconds = state.get("start_seconds")
        return cluster
