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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops

from api import create_app, load_settings
from api.console import install_console
from api.console.data import ConsoleSettings
from devstack.procs import die_with_parent_fn
from devstack.system import COMPUTECTL
from gpu_consumers.storage import FileStore
from projection.db.apikeys import create_key
from projection.db.migrate import migrate
from schemas.kafka_settings import KafkaSettings
from tests.api.conftest import serving
from tests.gpu_consumers.runtime_helpers import Running, Scripted, make_worker
from tests.projection.db.helpers import fresh_database

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make browser` installs it)
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "console"
# The demo's offline model folder (built once, under a file lock, by whichever process needs it
# first): on a machine that ran `make demo` or the demo test, the worker starts without building.
MODEL_CACHE = REPO / ".cache" / "models"
# What the demo asks (cli/demo_generation.py), one prediction: up to three attempts.
AGENTIC = {"shot_type_string": "full-body shot", "width": 64, "height": 96, "seed": 7,
           "generation_type": "AGENTIC", "max_attempts": 3, "min_confidence_score": 0.7,
           "evaluation_provider": "quality"}
# A screenshot is rewritten only when its size changed or more than _CHANGED_SHARE of its 8x8
# blocks changed (their mean, by more than _TOLERANCE in a channel). Every run shows new ids,
# tenant names and times, and new noise in attempts 2 and 3 (their seeds are drawn): 0.5-0.9%
# of the blocks, which alone would leave `make test` with a dirty tree. A changed layout or
# text moves far more (the overview's new hint and worker row: 1.4%; a new page: 7%).
_BLOCK = 8
_CHANGED_SHARE = 0.011
_TOLERANCE = 24
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
    # The AGENTIC generation submitted at the module's start: (its tenant's key, its id).
    agentic: tuple[str, str] = ("", "")

    def key(self, *, operator: bool = False, name: str | None = None) -> tuple[str, str]:
        """A new key of tenant ``name`` (a new tenant when None): (its tenant, the key). The
        database is the module's own, so the screenshots' tenants can have fixed names."""
        name = name or f"{'op' if operator else 'tenant'}-{uuid.uuid4().hex[:8]}"
        key, _ = create_key(self.db_url, name, operator=operator)
        return name, key

    def submit_agentic(self) -> None:
        """POST a catalog subject and an AGENTIC generation of a new tenant, as a client would:
        submitted with the stack, it runs while the other tests do (docs/CONSOLE.md, Tests).
        The tenant and the Idempotency-Key are fixed, so the generation id, and with it every
        attempt's seed and image, is the same each run: a stable screenshot."""
        _, key = self.key(name="studio")
        auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "console-agentic"}
        subject = httpx.post(f"{self.base_url}/api/v1/catalog/subjects", json={"name": "Mara"},
                             headers=auth, timeout=30)
        assert subject.status_code == 201, subject.text
        accepted = httpx.post(f"{self.base_url}/api/v1/generations", headers=auth, timeout=30,
                              json={**AGENTIC, "subject_id": subject.json()["id"]})
        assert accepted.status_code == 202, accepted.text
        self.agentic = (key, accepted.json()["generation_id"])


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
        with serving(app, db_url, kafka) as (base_url, _):
            handler = Scripted()
            worker = make_worker(kafka, handler, FileStore(results), task_timeout_s=60.0)
            running = Running(worker)
            children = Children(kafka, results, tmp_path_factory.mktemp("console-children"))
            children.start()  # the topics exist: the API's start-up created them
            try:
                stack = ConsoleStack(base_url, db_url, kafka, results, handler, children)
                stack.submit_agentic()
                yield stack
            finally:
                children.stop()
                worker.stop(now=True)
                running.join(30)


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
        size = (a.size[0] // _BLOCK, a.size[1] // _BLOCK)
        blocks = [i.convert("RGB").resize(size, Image.Resampling.BOX) for i in (a, b)]
        diff = ImageChops.difference(*blocks).convert("L")
        changed = diff.point(lambda v: 255 if v > _TOLERANCE else 0).histogram()[255]
        return changed / (size[0] * size[1])


def save_screenshot(page: Any, path: Path) -> bool:
    """The page's full screenshot to ``path`` unless the one there looks the same (see
    _CHANGED_SHARE); True when written."""
    shot = page.screenshot(full_page=True)
    if path.is_file() and _changed_share(path, shot) <= _CHANGED_SHARE:
        return False
    path.write_bytes(shot)
    return True
