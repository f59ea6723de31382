"""PostgreSQL down: the submit path answers 503 with Retry-After, never 500 (issue 15, item 5).

The database is a private local cluster of this test (the session's is shared by every module),
stopped for real with ``pg_ctl stop -m fast`` while the API keeps running on Kafka."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from api import create_app, load_settings
from devstack.postgres import PostgresCluster
from projection.db.apikeys import create_key
from schemas.kafka_settings import KafkaSettings
from tests.api.conftest import _Server
from tests.projection.db.helpers import wait_for

BODY = {"task_type": "LLM_INTERACTION", "prompt": "hello"}


@pytest.fixture
def private_db() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_submit_answers_503_with_retry_after_while_postgres_is_down(
        private_db: PostgresCluster, kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap,
                          topic_prefix=f"dbdown{uuid.uuid4().hex[:10]}", partitions=1)
    settings = load_settings(database_url=private_db.url, kafka=kafka, api_key_cache_s=300)
    server = _Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                    log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "the API server did not start"
        key, _ = create_key(private_db.url, "tenant-dbdown")
        other, _ = create_key(private_db.url, "tenant-dbdown-other")
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as client:
            def submit(api_key: str, **headers: str) -> httpx.Response:
                return client.post("/tasks", json=BODY,
                                   headers={"Authorization": f"Bearer {api_key}", **headers})

            up = submit(key)
            assert up.status_code == 202, up.text  # key cached, a pooled connection
            private_db.stop(keep_files=True)  # PostgreSQL down for real; Kafka still up
            # What needs the database: an Idempotency-Key check (first on a cut pooled
            # connection, then refused), a key not verified yet.
            for r in (submit(key, **{"Idempotency-Key": "k-1"}),
                      submit(key, **{"Idempotency-Key": "k-2"}), submit(other)):
                assert r.status_code == 503, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["type"] == "urn:compute-server:problem:service-unavailable"
                assert int(r.headers["Retry-After"]) >= 1
            # What does not: a verified key's plain submit still queues on Kafka alone.
            still = submit(key)
            assert still.status_code == 202, still.text
    finally:
        server.should_exit = True
        thread.join(30)
