"""Test fixtures: a real Kafka broker, a real PostgreSQL and a real S3 endpoint.

Each component is chosen on its own, the first time a test asks for it, in this order:

1. an endpoint given in the environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``,
   ``S3_ENDPOINT_URL`` (with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``);
2. testcontainers, when a Docker engine answers a ping (a ``docker`` client alone is not enough);
3. the local processes of ``computectl dev`` (devstack): a KRaft broker on the JVM, a
   throw-away PostgreSQL cluster, moto's S3 server.

A session that only uses Kafka never starts PostgreSQL. Nothing is skipped: if no source can
provide a component, every test that needs it fails and says why. Everything started here is
stopped at the end of the session, also after a failure, Ctrl-C or SIGTERM (and the local
server processes get the parent-death signal should pytest itself be killed).
"""

from __future__ import annotations

import atexit
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

# Overridable images for the testcontainers path. Kafka 3.9 (Confluent Platform 7.9) in KRaft
# mode is what testcontainers-python's KafkaContainer is known to drive; the local broker is 4.1.
KAFKA_IMAGE = os.environ.get("COMPUTE_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.9.0")
POSTGRES_IMAGE = os.environ.get("COMPUTE_TEST_POSTGRES_IMAGE", "postgres:15-alpine")
MINIO_IMAGE = os.environ.get("COMPUTE_TEST_MINIO_IMAGE", "minio/minio:RELEASE.2024-12-18T13-15-44Z")
ENDPOINT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str

    def client(self) -> Any:
        from devstack.s3 import s3_client

        return s3_client(self.endpoint_url, access_key=self.access_key, secret_key=self.secret_key,
                         region=self.region)

    def env(self) -> dict[str, str]:
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass
class _Provided:
    value: Any
    source: str  # "environment" | "testcontainers" | "local"
    local: Any = None  # the devstack object when source == "local"


@dataclass
class TestStack:
    """Lazily provides each component; ``close()`` stops whatever was started."""

    __test__ = False  # not a test class

    _provided: dict[str, _Provided] = field(default_factory=dict)
    _failures: dict[str, str] = field(default_factory=dict)
    _finalizers: list[Callable[[], None]] = field(default_factory=list)
    _docker: bool | None = None
    _docker_reason: str = ""

    # ------------------------------------------------------------------ public
    def kafka_bootstrap(self) -> str:
        return self._get("kafka", "KAFKA_BOOTSTRAP_SERVERS", self._kafka_env, self._kafka_docker,
                         self._kafka_local).value

    def database_url(self) -> str:
        return self._get("postgres", "DATABASE_URL", self._postgres_env, self._postgres_docker,
                         self._postgres_local).value

    def s3(self) -> S3Config:
        return self._get("s3", "S3_ENDPOINT_URL", self._s3_env, self._s3_docker, self._s3_local).value

    def source(self, name: str) -> str | None:
        """Where a component came from ("environment", "testcontainers", "local"), if started."""
        provided = self._provided.get(name)
        return provided.source if provided else None

    def local(self, name: str) -> Any:
        """The devstack object (KafkaBroker, PostgresCluster, S3Endpoint) when local."""
        provided = self._provided.get(name)
        return provided.local if provided else None

    def env(self) -> dict[str, str]:
        """Every endpoint as environment variables (starts all three)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap(),
            "DATABASE_URL": self.database_url(),
            **self.s3().env(),
        }

    def close(self) -> None:
        errors = []
        while self._finalizers:
            fin = self._finalizers.pop()
            try:
                fin()
            except Exception as exc:  # keep stopping the others
                errors.append(repr(exc))
        self._provided.clear()
        if errors:
            raise RuntimeError("stopping the test stack: " + "; ".join(errors))

    # ------------------------------------------------------------------ selection
    def _get(self, name: str, env_var: str, from_env: Callable[[str], Any],
             from_docker: Callable[[], Any], from_local: Callable[[], _Provided]) -> _Provided:
        if name in self._provided:
            return self._provided[name]
        if name in self._failures:
            pytest.fail(self._failures[name], pytrace=False)
        reasons: list[str] = []
        provided: _Provided | None = None
        stage = f"{env_var} from the environment"
        try:
            if os.environ.get(env_var):
                # Given explicitly: use it or fail; never silently start something else.
                provided = _Provided(from_env(os.environ[env_var]), "environment")
            else:
                if self.docker_available():
                    try:
                        provided = _Provided(from_docker(), "testcontainers")
                    except Exception as exc:
                        reasons.append(f"testcontainers: {type(exc).__name__}: {exc}")
                else:
                    reasons.append(f"testcontainers: {self._docker_reason}")
                if provided is None:
                    stage = "local processes (devstack)"
                    provided = from_local()
        except Exception as exc:
            reasons.append(f"{stage}: {type(exc).__name__}: {exc}")
            provided = None
        if provided is None:
            message = f"no {name} for the tests; tried:\n  " + "\n  ".join(reasons)
            self._failures[name] = message
            pytest.fail(message, pytrace=False)
        self._provided[name] = provided
        return provided

    def docker_available(self) -> bool:
        if self._docker is None:
            try:
                import docker

                client = docker.from_env(timeout=5)
                try:
                    client.ping()
                finally:
                    client.close()
                self._docker = True
            except Exception as exc:
                self._docker = False
                self._docker_reason = f"no Docker engine answers a ping ({type(exc).__name__}: {exc})"
        return self._docker

    def _container(self, container: Any) -> Any:
        container.start()
        self._finalizers.append(container.stop)
        return container

    def _local(self, component: Any) -> Any:
        self._finalizers.append(component.stop)
        component.start()
        return component

    # ------------------------------------------------------------------ Kafka
    @staticmethod
    def _kafka_env(bootstrap: str) -> str:
        from devstack.kafka import metadata_round_trip

        deadline = time.monotonic() + ENDPOINT_TIMEOUT_S
        while not metadata_round_trip(bootstrap):
            if time.monotonic() > deadline:
                raise RuntimeError(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} is set but no broker there "
                                   f"answered a metadata request within {ENDPOINT_TIMEOUT_S:.0f}s")
            time.sleep(0.2)
        return bootstrap

    def _kafka_docker(self) -> str:
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer
        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        container.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
        container.with_env("KAFKA_NUM_PARTITIONS", "1")
        return self._container(container).get_bootstrap_server()

    def _kafka_local(self) -> _Provided:
        from devstack.kafka import KafkaBroker

        broker = self._local(KafkaBroker())
        return _Provided(broker.bootstrap_servers, "local", broker)

    # ------------------------------------------------------------------ PostgreSQL
    @staticmethod
    def _postgres_env(url: str) -> str:
        from devstack.postgres import can_connect

        deadline = time.monotonic() + ENDPOINT_TIMEOUT_S
        while not can_connect(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"DATABASE_URL is set but PostgreSQL there refused connections "
                                   f"for {ENDPOINT_TIMEOUT_S:.0f}s")
            time.sleep(0.2)
        return url

    def _postgres_docker(self) -> str:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
        container = PostgresContainer(POSTGRES_IMAGE, dbname="compute", driver=None)
        return self._container(container).get_connection_url(driver=None)

    def _postgres_local(self) -> _Provided:
        from devstack.postgres import PostgresCluster

        cluster = self._local(PostgresCluster())
        return _Provided(cluster.url, "local", cluster)

    # ------------------------------------------------------------------ S3
    @staticmethod
    def _s3_env(endpoint_url: str) -> S3Config:
        from devstack.s3 import ACCESS_KEY, REGION, SECRET_KEY, http_answers

        deadline = time.monotonic() + ENDPOINT_TIMEOUT_S
        while not http_answers(endpoint_url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3_ENDPOINT_URL={endpoint_url} is set but nothing answers HTTP there")
            time.sleep(0.2)
        return S3Config(
            endpoint_url,
            os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            os.environ.get("AWS_DEFAULT_REGION", REGION),
        )

    def _s3_docker(self) -> S3Config:
        from devstack.s3 import REGION

        try:  # testcontainers' MinioContainer needs the `minio` package
            from testcontainers.community.minio import MinioContainer

            container = MinioContainer(MINIO_IMAGE)
        except ImportError:
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.wait_strategies import HttpWaitStrategy

            container = DockerContainer(MINIO_IMAGE, _wait_strategy=HttpWaitStrategy(9000, "/minio/health/live"))
            container.access_key, container.secret_key = "minioadmin", "minioadmin"
            container.with_exposed_ports(9000)
            container.with_env("MINIO_ROOT_USER", "minioadmin").with_env("MINIO_ROOT_PASSWORD", "minioadmin")
            container.with_command("server /data --address :9000")
        self._container(container)
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9000)}"
        return S3Config(url, container.access_key, container.secret_key, REGION)

    def _s3_local(self) -> _Provided:
        from devstack.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Endpoint

        endpoint = self._local(S3Endpoint())
        return _Provided(S3Config(endpoint.endpoint_url, ACCESS_KEY, SECRET_KEY, REGION), "local", endpoint)


# ---------------------------------------------------------------------------- SIGTERM

def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    # pytest treats KeyboardInterrupt as "stop the run", and still tears the fixtures down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the teardown finish
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def stack() -> Iterator[TestStack]:
    """The session's endpoints, each started on first use (see the module doc)."""
    test_stack = TestStack()
    atexit.register(test_stack.close)  # in case the session ends without teardown
    try:
        yield test_stack
    finally:
        test_stack.close()
        atexit.unregister(test_stack.close)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: TestStack) -> str:
    """``host:port`` of a Kafka broker answering metadata requests."""
    return stack.kafka_bootstrap()


@pytest.fixture(scope="session")
def database_url(stack: TestStack) -> str:
    """``postgresql://…`` of a database the tests may create tables in."""
    return stack.database_url()


@pytest.fixture(scope="session")
def s3_config(stack: TestStack) -> S3Config:
    """Endpoint, credentials and region of an S3-compatible server (``.client()`` for boto3)."""
    return stack.s3()


@pytest.fixture(scope="session")
def s3_endpoint_url(s3_config: S3Config) -> str:
    return s3_config.endpoint_url


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Any:
    """KafkaSettings for this test alone: its own topic prefix, so its own topics.

    Two partitions per topic: enough to show work shared between consumers, and each test
    creates ~25 topics, so six partitions each would make the broker the slowest part of the run.
    """
    from schemas.kafka_settings import KafkaSettings

    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}", partitions=2
    )


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A fresh folder for results (the embedded default); ``results_url`` is its file:// URL."""
    path = tmp_path / "results"
    path.mkdir()
    return path


@pytest.fixture
def results_url(results_dir: Path) -> str:
    return results_dir.resolve().as_uri()
