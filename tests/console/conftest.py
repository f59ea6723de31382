"""The console under test: the real API (uvicorn in a thread) with its projector, a real worker
(the scripted IMAGE_ADJUSTER handler, results in a file:// results root), real Kafka and
PostgreSQL, and a real headless Chromium (Debian's, driven by Playwright: `make browser`).
One stack for the module: starting Chromium and the stack once keeps the module near a minute."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gpu_consumers.storage import FileStore
from schemas.kafka_settings import KafkaSettings
from state.api import create_app, load_settings
from state.api.console import install_console
from state.api.console.data import ConsoleSettings
from state.db.apikeys import create_key
from state.db.migrate import migrate
from state.projector import Projector
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.state.db.helpers import fresh_database, wait_for

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make browser` installs it)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


@dataclass
class ConsoleStack:
    base_url: str
    db_url: str
    kafka: KafkaSettings
    results_dir: Path
    handler: Scripted

    def key(self, *, operator: bool = False) -> tuple[str, str]:
        """A new tenant's (name, API key)."""
        name = f"{'op' if operator else 'tenant'}-{uuid.uuid4().hex[:8]}"
        key, _ = create_key(self.db_url, name, operator=operator)
        return name, key


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@pytest.fixture(scope="module")
def console(database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ConsoleStack]:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap,
                          topic_prefix=f"console{uuid.uuid4().hex[:8]}", partitions=1)
    results = tmp_path_factory.mktemp("console-results")
    with fresh_database(database_url) as db_url:
        migrate(db_url)
        settings = load_settings(database_url=db_url, kafka=kafka, sse_poll_s=0.2,
                                 worker_group_prefix=f"{kafka.topic_prefix}-workers")
        app = create_app(settings)
        # The console of this app serves the worker's results root below.
        install_console(app, ConsoleSettings(results_url=results.resolve().as_uri(),
                                             kafka_refresh_s=0.5))
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                        lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "the API server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        projector = Projector(db_url, kafka, create_topics=False)
        stop = threading.Event()
        projecting = threading.Thread(target=projector.run, args=(stop,), daemon=True)
        projecting.start()
        handler = Scripted()
        worker = make_worker(kafka, handler, FileStore(results), task_timeout_s=60.0)
        running = Running(worker)
        try:
            yield ConsoleStack(f"http://127.0.0.1:{port}", db_url, kafka, results, handler)
        finally:
            worker.stop(now=True)
            running.join(30)
            stop.set()
            projecting.join(30)
            server.should_exit = True
            thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
