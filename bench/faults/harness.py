"""The fault suite's system: a private local stack (Kafka, PostgreSQL, S3 through
devstack), the services as real processes started the way ``computectl up`` starts them
(devstack/system.py: the same command lines and environment), and a steady load of
IMAGE_ADJUSTER tasks through the API.

:class:`Services` is a small supervisor of its own, not devstack/services.py: the suite must
SIGKILL, SIGSTOP and restart one service at a chosen moment, and start a worker once with a fault
point armed (gpu_consumers/fault_points.py) but restart it without. A service that dies is started
again after :data:`RESTART_DELAY_S`, like the real supervisor's first backoff; each death and
restart is noted so a scenario can take it as a fault's start and end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.faults.history import History, Submit
from devstack.kafka import default_repo_root
from devstack.procs import free_port, kill_group_leftovers, spawn, stop_tree, wait_until
from devstack.system import COMPUTECTL

RESTART_DELAY_S = 0.5  # the supervisor's first backoff (devstack/services.py)
WORKERS = ("worker-1", "worker-2")
_LOCAL_DEFAULTS = {"COMPUTE_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def worker_spec(name: str) -> tuple[list[str], dict[str, str]]:
    return ([*COMPUTECTL, "worker", "--types", "image_adjuster"],
            {"WORKER_GROUP_INSTANCE_ID": name, "WORKER_SHUTDOWN_GRACE_S": "10"})


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    started_at: float


@dataclass
class Death:
    name: str
    died_at: float  # when the suite noticed the exit (within a poll)
    restarted_at: float | None = None
    code: int | None = None


@dataclass
class Services:
    env: dict[str, str]
    logs: Path
    specs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    deaths: list[Death] = field(default_factory=list)
    wanted: set[str] = field(default_factory=set)  # restarted when they die

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._stop = threading.Event()
        # The supervision thread lives as long as the suite: the children's parent-death signal
        # is tied to the thread that spawned them (devstack/procs.spawn).
        self._watch = threading.Thread(target=self._watch_loop, name="services", daemon=True)
        self._watch.start()

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        argv, env = self.specs[name]
        with self._lock:
            proc = spawn(argv, log_path=self.logs / f"{name}.log", detached=False,
                         env={**self.env, **env, **(extra_env or {})}, cwd=default_repo_root())
            self.running[name] = Running(name, proc, time.time())
            self.wanted.add(name)

    def wait_assigned(self, name: str, since: int, timeout: float = 90.0) -> bool:
        """Whether the worker ``name`` logged a non-empty assignment past byte ``since`` of its log
        within ``timeout``: it has partitions, so it will take tasks."""
        log = self.logs / f"{name}.log"

        def assigned() -> bool:
            with open(log, "rb") as f:
                f.seek(since)
                return any(b"assigned compute.tasks." in line and not line.rstrip().endswith(b"[]")
                           for line in f)

        return wait_until(assigned, timeout, interval=0.25)

    def log_size(self, name: str) -> int:
        path = self.logs / f"{name}.log"
        return path.stat().st_size if path.exists() else 0

    def pid(self, name: str) -> int:
        return self.running[name].proc.pid

    def signal(self, name: str, sig: int) -> None:
        """``sig`` to the service's process group (the worker's handler child included)."""
        os.killpg(self.pid(name), sig)

    def kill(self, name: str) -> float:
        """SIGKILL; the watcher restarts it. Returns the time of the kill."""
        at = time.time()
        self.signal(name, signal.SIGKILL)
        return at

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM and wait (a clean leave); not restarted."""
        with self._lock:
            self.wanted.discard(name)
            run = self.running.pop(name, None)
        if run is not None:
            stop_tree(run.proc.pid, popen=run.proc, timeout=timeout)

    def wait_restarted(self, name: str, after: float, timeout: float = 30.0) -> Death:
        def found() -> Death | None:
            with self._lock:
                return next((d for d in self.deaths if d.name == name and d.died_at >= after - 1
                             and d.restarted_at is not None), None)

        if not wait_until(lambda: found() is not None, timeout, interval=0.1):
            raise TimeoutError(f"{name} was not restarted within {timeout:.0f}s")
        return found()  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._watch.join(5)
        with self._lock:
            names = list(self.running)
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            list(pool.map(self.stop, names))

    def _watch_loop(self) -> None:
        pending: dict[str, Death] = {}
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                for name, run in list(self.running.items()):
                    code = run.proc.poll()
                    if code is None or name in pending:
                        continue
                    kill_group_leftovers(run.proc.pid)
                    death = Death(name, now, code=code)
                    self.deaths.append(death)
                    if name in self.wanted:
                        pending[name] = death
                for name, death in list(pending.items()):
                    if now - death.died_at >= RESTART_DELAY_S and name in self.wanted:
                        self.start(name)  # without a fault point: the fault happens once
                        death.restarted_at = time.time()
                        del pending[name]


class Load:
    """Submits IMAGE_ADJUSTER tasks through the API from a few threads (submits do not wait for
    one another) and records each with its acknowledgement; can cancel tasks."""

    def __init__(self, api_url: str, api_key: str, image_uri: str, history: History,
                 threads: int = 4) -> None:
        self.history, self.image_uri = history, image_uri
        self.client = httpx.Client(base_url=api_url, timeout=30.0,
                                   headers={"Authorization": f"Bearer {api_key}"},
                                   limits=httpx.Limits(max_connections=threads + 2))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="load")

    def submit_one(self, tag: str) -> Submit:
        sent = time.time()
        try:
            resp = self.client.post("/api/v1/tasks", json={
                # The tag rides as the entity id, not the prompt: a prompt is adjustment guidance
                # that the LLM reads (issue 18), which would turn this no-op task into model work.
                "task_type": "IMAGE_ADJUSTER", "brightness": 0.1, "base_image_url": self.image_uri,
                "entity_id": tag}, headers={"Idempotency-Key": uuid.uuid4().hex})
            task_id = resp.json().get("task_id") if resp.status_code == 202 else None
            sub = Submit(task_id, sent, time.time() if task_id else None, resp.status_code,
                         None if task_id else resp.text[:200])
        except httpx.HTTPError as exc:
            sub = Submit(None, sent, None, None, f"{type(exc).__name__}: {exc}")
        self.history.add_submit(sub)
        return sub

    def run(self, tag: str, count: int, over_s: float,
            until: Callable[[], bool] | None = None) -> list[Submit]:
        """``count`` submits spread evenly over ``over_s`` seconds, and at the same rate after
        that while ``until`` is false; returns once all answered."""
        t0, futures, interval = time.monotonic(), [], over_s / max(count, 1)
        i = 0
        while i < count or (until is not None and not until()):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not waiting for a condition
            futures.append(self.pool.submit(self.submit_one, tag))
            i += 1
        return [f.result() for f in futures]

    def cancel(self, task_id: str) -> int | None:
        try:
            return self.client.post(f"/api/v1/tasks/{task_id}/cancel").status_code
        except httpx.HTTPError:
            return None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def image_in(inputs_dir: Path) -> str:
    """A small PNG in the stack's allowed inputs folder, as a file:// URL."""
    from PIL import Image

    path = Path(inputs_dir) / "fault-suite.png"
    Image.new("RGB", (32, 32), (120, 80, 40)).save(path)
    return path.resolve().as_uri()


def service_env(stack_env: dict[str, str], state_dir: Path) -> dict[str, str]:
    defaults = {**_LOCAL_DEFAULTS,
                "COMPUTE_MODEL_CACHE_DIR": str(default_repo_root() / ".cache" / "models"),
                "PROCESSORS_DATADIR": str(state_dir / "processors-data")}
    return {**defaults, **os.environ, **stack_env}


def standard_specs(api_port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The same services as ``computectl up`` with two image_adjuster workers."""
    specs = {name: worker_spec(name) for name in WORKERS}
    specs["processors"] = ([*COMPUTECTL, "processors", "--no-create-topics"],
                           {"PROCESSORS_GROUP_INSTANCE_ID": "processors"})
    # static membership, as computectl up (devstack/system.py): a restarted projector
    # takes its partitions back at once instead of after the dead member's 45 s session
    specs["projector"] = ([*COMPUTECTL, "projector"], {"PROJECTOR_GROUP_INSTANCE_ID": "projector"})
    specs["api"] = ([*COMPUTECTL, "api", "--host", "127.0.0.1", "--port", str(api_port)], {})
    return specs


def new_state_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="fault-suite-"))
    path.chmod(0o755)  # the stack's base folder: PostgreSQL runs as 'nobody' when we are root
    return path


def api_port() -> int:
    return free_port()
