"""The record of a detached stack (``computectl dev up``): ``<state dir>/state.json``.

It names every server process (pid and start time, so a reused pid is never mistaken for
ours), its ports and its work folder; ``dev down``, ``dev status`` and the fault commands
(control.py) read it, and the fault commands write the new pids back after a restart. A Kafka
cluster is recorded as ``{"nodes": [...]}``; its processes are named ``kafka-1`` ... ``kafka-n``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack.procs import DevStackError, pid_alive

STATE_FILE = "state.json"
LOCK_FILE = "state.lock"


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The record, or None when no stack is recorded; DevStackError when it is not JSON."""
    path = state_path(state_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DevStackError(f"{path} is not valid JSON ({exc}); remove it after checking no stack runs") from exc


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Replace the record atomically (a reader never sees half a file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(state_path(state_dir))


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the record's lock: two fault commands at once (stop node 1, stop node 2) would each
    write back a record that lacks the other's change."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def recorded_processes(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each recorded server process's own record by name (a cluster's nodes one by one)."""
    found: dict[str, dict[str, Any]] = {}
    for name, comp in state.get("components", {}).items():
        if "nodes" in comp:
            found.update({f"{name}-{n.get('node_id', i + 1)}": n for i, n in enumerate(comp["nodes"])})
        else:
            found[name] = comp
    return found


def recorded_pids(state: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    """pid and start time of each recorded process that runs by the record (a node stopped with
    ``dev stop`` has none)."""
    return {
        name: (c["pid"], c.get("start_ticks"))
        for name, c in recorded_processes(state).items()
        if c.get("pid")
    }


def alive(state: dict[str, Any]) -> dict[str, bool]:
    return {name: pid_alive(pid, ticks) for name, (pid, ticks) in recorded_pids(state).items()}
