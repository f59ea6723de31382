"""The API under test: a real uvicorn server in a thread, a real projector, real Kafka and
PostgreSQL. One stack per test module (its own database and topic prefix); each test gets its
own tenant, so tests never see each other's tasks."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from api import create_app, load_settings
from projection.db.apikeys import create_key
from projection.db.migrate import migrate
from projection.projector import Projector
from projection.webhook_delivery import WebhookDispatcher
from projection.webhooks import WebhookSettings
from schemas.kafka_settings import KafkaSettings
from tests.projection.db.helpers import fresh_database, wait_for


@dataclass
class ApiStack:
    base_url: str
    db_url: str
    kafka: KafkaSettings
    app: object
    projector: Projector
    worker_group_prefix: str


@dataclass
class Tenant:
    name: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@contextlib.contextmanager
def serving(app: Any, db_url: str, kafka: KafkaSettings,
            webhooks: WebhookSettings | None = None) -> Iterator[tuple[str, Projector]]:
    """``app`` under uvicorn on a free port, with a projector filling ``db_url``: (base URL,
    projector) until the block ends. With ``webhooks``, the projector also queues and delivers
    the webhook outbox (as ``run_projector`` does)."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                    lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
    assert server.started, "the API server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    dispatcher = None if webhooks is None else WebhookDispatcher(db_url, webhooks)
    projector = Projector(db_url, kafka, create_topics=False,
                          on_batch=None if dispatcher is None else dispatcher.on_batch,
                          in_transaction=None if dispatcher is None else dispatcher.enqueue)
    stop = threading.Event()
    projecting = threading.Thread(target=projector.run, args=(stop,), daemon=True)
    projecting.start()
    try:
        yield f"http://127.0.0.1:{port}", projector
    finally:
        stop.set()
        projecting.join(30)
        if dispatcher is not None:
            dispatcher.stop()
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, database_url: str, kafka_bootstrap: str) -> Iterator[ApiStack]:
    """The stack; a test module's ``API_SETTINGS`` dict overrides settings of its API."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap,
                          topic_prefix=f"api{uuid.uuid4().hex[:10]}", partitions=2)
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        settings = load_settings(database_url=db_url, kafka=kafka, sse_poll_s=0.2,
                                 sse_keepalive_s=0.4,
                                 worker_group_prefix=f"{kafka.topic_prefix}-workers",
                                 **getattr(request.module, "API_SETTINGS", {}))
        app = create_app(settings)
        with serving(app, db_url, kafka) as (base_url, projector):
            yield ApiStack(base_url, db_url, kafka, app, projector, settings.worker_group_prefix)


@pytest.fixture
def client(api: ApiStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30) as c:
        yield c


def new_tenant(api: ApiStack, *, operator: bool = False) -> Tenant:
    name = f"{'operator' if operator else 'tenant'}-{uuid.uuid4().hex[:8]}"
    key, record = create_key(api.db_url, name, operator=operator)
    return Tenant(name, key, record.key_id)


@pytest.fixture
def tenant(api: ApiStack) -> Tenant:
    return new_tenant(api)


@pytest.fixture
def other_tenant(api: ApiStack) -> Tenant:
    return new_tenant(api)


@pytest.fixture
def operator(api: ApiStack) -> Tenant:
    """A key with the operator scope: /metrics and the fleet-wide monitoring routes."""
    return new_tenant(api, operator=True)


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    """An empty database of its own for one test (tests that run their own projector)."""
    with fresh_database(database_url) as url:
        yield url
