"""The whole system on the local stack, as ``computectl up`` starts it: the stack's topics and
tables, an API key, and the supervisor (devstack/services.py) running the services.

Everything lives in the stack's state folder (``.cache/devstack`` unless moved), beside the
stack's own ``state.json``:

- ``services-config.json``: what ``up`` asked the supervisor to run (written before it starts);
- ``services.json``: the supervisor's record of each service (only it writes this file);
- ``apikey.json``: the key ``up`` created, mode 0600, so a second ``up`` prints the same one;
- ``logs/<service>.log``: each service's output, with the supervisor's notes (kept by ``down``);
- ``processors-data/``: the processors' local folder (PROCESSORS_DATADIR).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.kafka import default_repo_root
from devstack.procs import DevStackError, pid_alive, spawn, tail
from devstack.services import (
    RestartPolicy,
    ServiceSpec,
    read_state,
    stop_supervisor,
    supervisor_alive,
)
from schemas.enums import TaskType

# What `computectl` runs, without relying on the console script being on PATH.
COMPUTECTL = (sys.executable, "-c", "from cli.main import main; main()")
_POLL_S = 0.25
# What the services run with unless the environment says otherwise: the tiny offline models,
# built once into the project's cache (shared with `make demo`), never a download.
_LOCAL_DEFAULTS = {"COMPUTE_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class SystemFiles:
    state_dir: Path

    @property
    def config(self) -> Path:
        return self.state_dir / "services-config.json"

    @property
    def services(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def key(self) -> Path:
        return self.state_dir / "apikey.json"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def processors_data(self) -> Path:
        return self.state_dir / "processors-data"

    def state(self) -> dict[str, Any] | None:
        return read_state(self.services)


def worker_names(workers: int) -> list[str]:
    return ["worker"] if workers == 1 else [f"worker-{i}" for i in range(1, workers + 1)]


def service_specs(types: Sequence[TaskType], workers: int, api_port: int) -> list[ServiceSpec]:
    """The worker(s) for ``types``, the processors, the projector and the API on ``api_port``."""
    serve = ["worker", "--types", ",".join(t.slug for t in types)]
    # Static group membership under the service's name: a restarted worker or processors app
    # takes its partitions back at once, not after the killed one's session has timed out.
    return [*(ServiceSpec(name, [*COMPUTECTL, *serve], {"WORKER_GROUP_INSTANCE_ID": name})
              for name in worker_names(workers)),
            # `up` has created the topics.
            ServiceSpec("processors", [*COMPUTECTL, "processors", "--no-create-topics"],
                        {"PROCESSORS_GROUP_INSTANCE_ID": "processors"}),
            ServiceSpec("projector", [*COMPUTECTL, "projector"],
                        {"PROJECTOR_GROUP_INSTANCE_ID": "projector"}),
            ServiceSpec("api", [*COMPUTECTL, "api", "--host", "127.0.0.1", "--port", str(api_port)])]


def services_env(stack_env: dict[str, str], files: SystemFiles) -> dict[str, str]:
    """The caller's environment with the stack's endpoints over it (a shell may still export an
    older stack's) and the local defaults under it."""
    defaults = {**_LOCAL_DEFAULTS,
                "COMPUTE_MODEL_CACHE_DIR": str(default_repo_root() / ".cache" / "models"),
                "PROCESSORS_DATADIR": str(files.processors_data),
                # the consumers' health reports, read by the API's /readyz (docs/RELIABILITY.md)
                "COMPUTE_HEALTH_DIR": str(files.state_dir / "health")}
    return {**defaults, **os.environ, **stack_env}


def stack_kafka_settings(stack_env: dict[str, str], **extra: Any) -> Any:
    """KafkaSettings for the stack's Kafka: its bootstrap servers and its topics' replication
    (3/2 on a cluster, 1/1 on one broker), not the caller's shell's; the rest as usual."""
    from schemas.kafka_settings import KafkaSettings

    fields = {field: stack_env[var] for field, var in (
        ("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
        ("replication_factor", "KAFKA_REPLICATION_FACTOR"),
        ("min_insync_replicas", "KAFKA_MIN_INSYNC_REPLICAS"),
    ) if stack_env.get(var)}
    return KafkaSettings(**fields, **extra)


# --------------------------------------------------------------------------- the API key

def ensure_key(files: SystemFiles, database_url: str, tenant: str) -> str:
    """The key ``up`` created for ``tenant`` in this database, or a new one (remembered 0600)."""
    try:
        saved = json.loads(files.key.read_text())
        if saved.get("database_url") == database_url and saved.get("tenant") == tenant:
            return saved["key"]
    except (OSError, ValueError, KeyError):
        pass  # none yet, or an older stack's: its database is gone
    from projection.db.apikeys import create_key

    key, record = create_key(database_url, tenant, name="computectl up")
    files.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        json.dump({"key": key, "key_id": record.key_id, "tenant": tenant,
                   "database_url": database_url}, f)
    return key


def api_exports(state_dir: Path) -> dict[str, str]:
    """COMPUTE_API_URL and COMPUTE_API_KEY while ``up``'s supervisor runs; empty otherwise."""
    files = SystemFiles(state_dir)
    state = files.state()
    if not supervisor_alive(state):
        return {}
    exports = {"COMPUTE_API_URL": state["api_url"]}
    try:
        exports["COMPUTE_API_KEY"] = json.loads(files.key.read_text())["key"]
    except (OSError, ValueError, KeyError):
        pass
    return exports


# --------------------------------------------------------------------------- the supervisor

def start_supervisor(files: SystemFiles, specs: Sequence[ServiceSpec], env: dict[str, str], *,
                     api_url: str, extra: dict[str, Any],
                     policy: RestartPolicy = RestartPolicy()) -> int:
    """Spawn the supervisor detached (it outlives ``up``; ``down`` stops it); return its pid.
    The logs of a previous run are removed first, so each ``up`` starts them afresh."""
    files.logs.mkdir(parents=True, exist_ok=True)
    for old in files.logs.glob("*.log"):
        old.unlink()
    files.services.unlink(missing_ok=True)
    config = {"services": [asdict(s) for s in specs], "policy": asdict(policy),
              "logs_dir": str(files.logs), "state_file": str(files.services),
              "extra": {"api_url": api_url, **extra}}
    files.config.write_text(json.dumps(config, indent=2))
    proc = spawn([sys.executable, "-m", "devstack.services", str(files.config)],
                 log_path=files.logs / "supervisor.log", detached=True, env=env,
                 cwd=default_repo_root())
    return proc.pid


def wait_ready(files: SystemFiles, supervisor_pid: int, api_url: str, timeout: float) -> None:
    """Return once the API answers /readyz; DevStackError when the supervisor or the API gave
    up first, or at the deadline (with the end of the API's log)."""
    deadline = time.monotonic() + timeout
    while True:
        state = files.state()
        if state is None or state["supervisor"]["pid"] != supervisor_pid:
            if not pid_alive(supervisor_pid):  # before it wrote its state: an early crash
                raise DevStackError("the supervisor exited; its log:\n"
                                    + tail(files.logs / "supervisor.log"))
        else:
            if not supervisor_alive(state):
                raise DevStackError("the supervisor exited; its log:\n"
                                    + tail(files.logs / "supervisor.log"))
            if state["services"]["api"]["state"] == "failed":
                raise DevStackError("the API keeps exiting; the end of its log:\n"
                                    + tail(files.logs / "api.log", 30))
            try:
                if httpx.get(f"{api_url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
        if time.monotonic() > deadline:
            raise DevStackError(f"the API at {api_url} was not ready within {timeout:.0f}s; the "
                                "end of its log:\n" + tail(files.logs / "api.log", 30))
        time.sleep(_POLL_S)


def stop_services(state_dir: Path) -> list[str]:
    """Stop ``up``'s supervisor and every service it runs; forget the key (its database goes
    with the stack). The logs stay. Returns a problem per process still running."""
    files = SystemFiles(state_dir)
    state = files.state()
    problems = stop_supervisor(state) if state is not None else []
    if not problems:
        for path in (files.services, files.config, files.key):
            path.unlink(missing_ok=True)
        shutil.rmtree(files.processors_data, ignore_errors=True)  # tables of a cluster now gone
    return problems


def api_url_for(database_url: str, state_dir: Path) -> str | None:
    """The URL of an API serving ``database_url``, where known: COMPUTE_API_URL, else the API
    of `computectl up` when it runs on that database (``apikey create`` prints it)."""
    if os.environ.get("COMPUTE_API_URL"):
        return os.environ["COMPUTE_API_URL"]
    stack = read_state(state_dir / "state.json") or {}
    if stack.get("env", {}).get("DATABASE_URL") != database_url:
        return None
    return api_exports(state_dir).get("COMPUTE_API_URL")
