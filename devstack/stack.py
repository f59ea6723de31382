"""The local stack: Kafka + PostgreSQL + an S3 endpoint + a ``file://`` results folder.

    with LocalStack() as stack:
        subprocess.run(cmd, env={**os.environ, **stack.env()})

Components start in parallel (threads; each is an external process) and any of them can be
left out. If one fails to start, the others are stopped and the error names the one that
failed. ``detached=True`` (``computectl dev up``) makes the processes outlive the caller;
``to_state()``/``from_state()`` let a later process (``dev down``) stop them.

``brokers=3`` starts a three-node KRaft cluster (kafka_cluster.py) instead of one broker.

Faults on the same data and ports (for tests and the fault suite; the CLI's ``dev restart`` /
``stop`` / ``start`` / ``freeze`` do the same to a stack ``dev up`` started, see control.py):

    stack.stop_broker(2)             # SIGTERM node 2 (kill=True: SIGKILL), keep its data
    stack.start_broker(2)            # start it again; returns once it answers metadata
    stack.freeze_broker(1); stack.thaw_broker(1)     # SIGSTOP / SIGCONT
    stack.restart_kafka()            # every node: stop, start on the same data (kill=True too)
    stack.restart_postgres()         # pg_ctl stop -m fast (kill=True: SIGKILL), start, same data
    stack.restart_s3()               # moto keeps its data in memory: buckets/objects are lost

Node numbers are 1..brokers (a single broker is node 1). A restarted process is spawned from
the calling thread, like start()'s.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack.kafka import KafkaBroker
from devstack.kafka_cluster import KafkaCluster, topic_env
from devstack.postgres import PostgresCluster
from devstack.procs import DevStackError
from devstack.s3 import S3Endpoint, s3_credentials_env

Component = KafkaBroker | KafkaCluster | PostgresCluster | S3Endpoint


class LocalStack:
    def __init__(
        self,
        *,
        kafka: bool = True,
        postgres: bool = True,
        s3: bool = True,
        repo_root: Path | str | None = None,
        detached: bool = False,
        results_dir: Path | str | None = None,
        base_dir: Path | str | None = None,
        brokers: int = 1,
    ) -> None:
        self.detached = detached
        self.kafka: KafkaBroker | KafkaCluster | None = None
        if kafka and brokers == 1:
            self.kafka = KafkaBroker(repo_root=repo_root, detached=detached, base_dir=base_dir)
        elif kafka:
            self.kafka = KafkaCluster(brokers, repo_root=repo_root, detached=detached, base_dir=base_dir)
        self.postgres = PostgresCluster(detached=detached, base_dir=base_dir) if postgres else None
        self.s3 = S3Endpoint(detached=detached, base_dir=base_dir) if s3 else None
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._given_results_dir = Path(results_dir) if results_dir is not None else None
        self.results_dir: Path | None = self._given_results_dir
        self._own_results_dir = False
        # Where the stack's tasks may take file:// inputs from (INPUT_ALLOWED_FILE_ROOTS): file://
        # is off unless a folder is named (docs/SECURITY.md). A temp folder that stop() deletes.
        self.inputs_dir: Path | None = None
        self.start_seconds: float | None = None

    def components(self) -> dict[str, Component]:
        named: dict[str, Component | None] = {"kafka": self.kafka, "postgres": self.postgres, "s3": self.s3}
        return {name: c for name, c in named.items() if c is not None}

    def start(
        self,
        timeout: float = 120.0,
        *,
        on_launched: Callable[[LocalStack], None] | None = None,
    ) -> LocalStack:
        """Start every component; return once all answer.

        ``on_launched`` runs once every server process exists, before the readiness waits
        (``dev up`` records the pids there, so even an interrupted start can be stopped).
        """
        t0 = time.monotonic()
        if self.results_dir is None:
            self.results_dir = Path(tempfile.mkdtemp(prefix="devstack-results-", dir=self.base_dir))
            self._own_results_dir = True
        else:
            self.results_dir.mkdir(parents=True, exist_ok=True)
        if self.inputs_dir is None:
            self.inputs_dir = Path(tempfile.mkdtemp(prefix="devstack-inputs-", dir=self.base_dir))
        components = self.components()
        try:
            # Formatting, initdb (slow, external) in parallel; the servers are launched from
            # this thread, which outlives them (the parent-death signal is tied to the thread
            # that spawned a child); the readiness polls run in parallel again.
            self._in_parallel(components, lambda c: c.prepare(timeout), "prepare")
            for c in components.values():
                c.launch()
            if on_launched is not None:
                on_launched(self)
            self._in_parallel(components, lambda c: c.wait_ready(timeout), "wait")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    @staticmethod
    def _in_parallel(components: dict[str, Component], fn: Any, what: str) -> None:
        errors: list[str] = []
        pool = ThreadPoolExecutor(max_workers=max(1, len(components)), thread_name_prefix=f"devstack-{what}")
        try:
            futures = {name: pool.submit(fn, c) for name, c in components.items()}
            for name, future in futures.items():
                exc = future.exception()
                if exc is not None:
                    errors.append(f"{name}: {exc}")
        except BaseException:  # Ctrl-C / SIGTERM while waiting: make the pollers give up now
            for c in components.values():
                c.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
        if errors:
            raise DevStackError("the local stack did not start:\n" + "\n".join(errors))

    def stop(self) -> None:
        """Stop every component that runs (in parallel), then remove the temp dirs.

        Every component is attempted even if one fails; the first error is raised at the end.
        """
        components = self.components()
        errors: list[str] = []
        if components:
            with ThreadPoolExecutor(max_workers=len(components), thread_name_prefix="devstack-stop") as pool:
                futures = {name: pool.submit(c.stop) for name, c in components.items()}
                for name, future in futures.items():
                    exc = future.exception()
                    if exc is not None:
                        errors.append(f"{name}: {exc}")
        if self._own_results_dir and self.results_dir is not None:
            shutil.rmtree(self.results_dir, ignore_errors=True)
            self.results_dir = None
            self._own_results_dir = False
        if self.inputs_dir is not None:
            shutil.rmtree(self.inputs_dir, ignore_errors=True)
            self.inputs_dir = None
        if errors:
            raise DevStackError("the local stack did not stop cleanly:\n" + "\n".join(errors))

    def env(self) -> dict[str, str]:
        """The endpoints as environment variables for our processes and tests."""
        env: dict[str, str] = {}
        if isinstance(self.kafka, KafkaCluster):
            env.update(self.kafka.env())  # every node, and the topics' RF / min ISR
        elif self.kafka is not None:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
            # 1/1, said explicitly: a shell that still exports a cluster's 3/2 must not reach
            # `topics create` or the services of this one-broker stack.
            env.update(topic_env(1))
        if self.postgres is not None:
            env["DATABASE_URL"] = self.postgres.url
        if self.s3 is not None:
            env["S3_ENDPOINT_URL"] = self.s3.endpoint_url
        env.update(s3_credentials_env())
        if self.results_dir is not None:
            env["RESULTS_URL"] = self.results_dir.resolve().as_uri()
            if self._own_results_dir:  # a temp folder that stop() deletes: nothing to keep
                env["RESULTS_FSYNC"] = "false"
        if self.inputs_dir is not None:
            env["INPUT_ALLOWED_FILE_ROOTS"] = str(self.inputs_dir.resolve())
        return env

    def status(self) -> dict[str, dict[str, Any]]:
        """Per component: its pid, whether the process is alive and whether it answers."""
        report: dict[str, dict[str, Any]] = {}
        for name, c in self.processes().items():
            alive = c.is_alive()
            report[name] = {"pid": c.pid, "alive": alive, "answering": bool(alive and c.ping()),
                            "frozen": c.is_frozen()}
        return report

    def processes(self) -> dict[str, KafkaBroker | PostgresCluster | S3Endpoint]:
        """Every server process by name: a cluster's nodes are ``kafka-1`` ... ``kafka-n``."""
        found: dict[str, KafkaBroker | PostgresCluster | S3Endpoint] = {}
        for name, c in self.components().items():
            if isinstance(c, KafkaCluster):
                found.update({f"kafka-{n.node_id}": n for n in c.nodes})
            else:
                found[name] = c
        return found

    def pids(self) -> list[int]:
        return [c.pid for c in self.processes().values() if c.pid is not None]

    # ------------------------------------------------------------------ faults (same data, same ports)
    def broker(self, node: int = 1) -> KafkaBroker:
        """Kafka node ``node`` (1..brokers; a single broker is node 1)."""
        if isinstance(self.kafka, KafkaCluster):
            return self.kafka.node(node)
        if self.kafka is None or node != 1:
            raise DevStackError(f"no Kafka node {node} in this stack")
        return self.kafka

    def stop_broker(self, node: int = 1, *, kill: bool = False) -> None:
        """Stop one node, keep its data: SIGTERM (controlled shutdown) or SIGKILL (``kill``)."""
        self.broker(node).halt(kill=kill)

    def start_broker(self, node: int = 1, timeout: float | None = None) -> None:
        """Start a stopped node again on its data and ports; returns once it answers metadata."""
        self.broker(node).resume(timeout)

    def freeze_broker(self, node: int = 1) -> None:
        """SIGSTOP one node: its sockets stay open, nothing answers (thaw_broker ends it)."""
        self.broker(node).freeze()

    def thaw_broker(self, node: int = 1) -> None:
        self.broker(node).thaw()

    def _component(self, name: str) -> Component:
        c = self.components().get(name)
        if c is None:
            raise DevStackError(f"this stack has no {name}")
        return c

    def restart_kafka(self, timeout: float | None = None, *, kill: bool = False) -> None:
        """Every Kafka node: stop (SIGTERM, or SIGKILL with ``kill``) and start on its data."""
        self._component("kafka").restart(timeout, kill=kill)

    def restart_postgres(self, timeout: float | None = None, *, kill: bool = False) -> None:
        """PostgreSQL: ``pg_ctl stop -m fast`` (or SIGKILL with ``kill``), start on its data."""
        self._component("postgres").restart(timeout, kill=kill)

    def restart_s3(self, timeout: float | None = None, *, kill: bool = False) -> None:
        """The S3 endpoint on its port. moto keeps everything in memory: the data is lost."""
        self._component("s3").restart(timeout, kill=kill)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state (dev up/down)
    def to_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "components": {name: c.to_state() for name, c in self.components().items()},
            "results_dir": str(self.results_dir) if self.results_dir else None,
            "own_results_dir": self._own_results_dir,
            "inputs_dir": str(self.inputs_dir) if self.inputs_dir else None,
            "env": self.env(),
            "start_seconds": self.start_seconds,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LocalStack:
        comps = state.get("components", {})
        stack = cls(kafka=False, postgres=False, s3=False, detached=True)
        if "kafka" in comps and "nodes" in comps["kafka"]:
            stack.kafka = KafkaCluster.from_state(comps["kafka"])
        elif "kafka" in comps:
            stack.kafka = KafkaBroker.from_state(comps["kafka"])
        if "postgres" in comps:
            stack.postgres = PostgresCluster.from_state(comps["postgres"])
        if "s3" in comps:
            stack.s3 = S3Endpoint.from_state(comps["s3"])
        if state.get("results_dir"):
            stack.results_dir = Path(state["results_dir"])
            stack._own_results_dir = bool(state.get("own_results_dir"))
        if state.get("inputs_dir"):
            stack.inputs_dir = Path(state["inputs_dir"])
        stack.start_seconds = state.get("start_seconds")
        return stack
