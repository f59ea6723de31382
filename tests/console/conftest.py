"""The console under test: the real API (uvicorn in a thread) with its projector, a real worker
(the scripted IMAGE_ADJUSTER handler, results in a file:// results root), real Kafka and
PostgreSQL, and a real headless Chromium (Debian's, driven by Playwright: `make browser`).
For the AGENTIC generation, the real processors (``computectl processors``) and a real
GENERATION worker (``computectl worker``, the offline tiny models, the same results root) run as
processes, started with the stack so that their start-up overlaps the first tests.
One stack for the module: starting Chromium and the stack once keeps the module near two minutes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image, ImageChops

from gpu_consumers.storage import FileStore
from schemas.kafka_settings import KafkaSettings
from state.api import create_app, load_settings
from state.api.console import install_console
from state.api.console.data import ConsoleSettings
from state.db.apikeys import create_key
from state.db.migrate import migrate
from state.devstack.procs import die_with_parent_fn
from state.devstack.system import COMPUTECTL
from state.projector import Projector
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.state.db.helpers import fresh_database, wait_for

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make browser` installs it)
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "console"
# The demo's offline model folder (built once, under a file lock, by whichever process needs it
# first): on a machine that ran `make demo` or the demo test, the worker starts without building.
MODEL_CACHE = REPO / ".cache" / "models"
# A screenshot is rewritten only when more than this share of its pixels changed (by more than
# _PIXEL_TOLERANCE in some channel), or its size did: every run shows new ids, tenants and times
# (about 1% of the pixels), which alone would leave `make test` with a dirty tree.
_CHANGED_SHARE = 0.03
_PIXEL_TOLERANCE = 24
# Variables of this process that would point the child processes elsewhere.
_OWN_PREFIXES = ("KAFKA_", "WORKER_", "INPUT_", "COMPUTE_", "PROCESSORS_", "S3_", "AWS_",
                 "RESULTS_URL", "DATABASE_URL")


@dataclass
class ConsoleStack:
    base_url: str
    db_url: str
    kafka: KafkaSettings
    results_dir: Path
    handler: Scripted
    children: Children

    def key(self, *, operator: bool = False) -> tuple[str, str]:
        """A new tenant's (name, API key)."""
        name = f"{'op' if operator else 'tenant'}-{uuid.uuid4().hex[:8]}"
        key, _ = create_key(self.db_url, name, operator=operator)
        return name, key


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


class Children:
    """``computectl processors`` and ``computectl worker --types generation`` on the stack's
    topics and results root; their logs in ``folder``."""

    def __init__(self, kafka: KafkaSettings, results: Path, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)} | {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "KAFKA_PARTITIONS": str(kafka.partitions),
            "WORKER_GROUP_PREFIX": f"{kafka.topic_prefix}-workers", "WORKER_DEVICE": "cpu",
            "RESULTS_URL": results.resolve().as_uri(), "COMPUTE_MODEL_PROFILE": "offline",
            "COMPUTE_MODEL_CACHE_DIR": str(MODEL_CACHE), "PROCESSORS_DATADIR": str(folder / "processors"),
            "PROCESSORS_COMMIT_INTERVAL_S": "0.5", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, args in (("worker", ("worker", "--types", "generation", "--log-level", "WARNING")),
                           ("processors", ("processors", "--no-create-topics", "--log-level", "WARNING"))):
            with open(self.folder / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(
                    [*COMPUTECTL, *args], cwd=REPO, env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    preexec_fn=die_with_parent_fn())  # noqa: PLW1509 (one prctl call)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                         for name in self.procs)

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL for one that did not stop in time."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


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
        children = Children(kafka, results, tmp_path_factory.mktemp("console-children"))
        children.start()  # the topics exist: the API's start-up created them
        try:
            yield ConsoleStack(f"http://127.0.0.1:{port}", db_url, kafka, results, handler, children)
        finally:
            children.stop()
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


def _changed_share(old: Path, new: bytes) -> float:
    with Image.open(old) as a, Image.open(io.BytesIO(new)) as b:
        if a.size != b.size:
            return 1.0
        diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L")
        changed = diff.point(lambda v: 255 if v > _PIXEL_TOLERANCE else 0).histogram()[255]
        return changed / (a.size[0] * a.size[1])


def save_screenshot(page: Any, path: Path) -> bool:
    """The page's full screenshot to ``path`` unless the one there looks the same (see
    _CHANGED_SHARE); True when written."""
    shot = page.screenshot(full_page=True)
    if path.is_file() and _changed_share(path, shot) <= _CHANGED_SHARE:
        return False
    path.write_bytes(shot)
    return True
