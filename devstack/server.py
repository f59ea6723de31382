"""One local server process and its work folder (the base of the Kafka broker, PostgreSQL and
the S3 endpoint of the local stack), and the sweep of work folders whose server is gone.

The process helpers they use (spawning, stopping a tree, liveness by pid) are in procs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from devstack.procs import (
    DevStackError,
    pid_alive,
    pid_state,
    proc_start_ticks,
    stop_tree,
)

OWNER_FILE = "owner.json"


def record_owner(workdir: Path, pid: int, start_ticks: int | None) -> None:
    """Note in ``workdir`` which server process it belongs to (see sweep_stale_workdirs)."""
    (workdir / OWNER_FILE).write_text(json.dumps({"pid": pid, "start_ticks": start_ticks}))


def record_halted(workdir: Path, *, detached: bool) -> None:
    """Note in ``workdir`` that its server was stopped on purpose and its data is kept (halt()).

    Without it, any other server's start would sweep the folder as stale while the server is
    down, or between halt() and the next launch(). A detached stack's folder is kept until
    ``dev down``; an in-process one's while the process that halted it lives (it is the one
    that will start it again).
    """
    holder = None if detached else {"pid": os.getpid(), "start_ticks": proc_start_ticks(os.getpid())}
    (workdir / OWNER_FILE).write_text(json.dumps({"halted": True, "holder": holder}))


def _stale(owner: dict[str, Any]) -> bool:
    if owner.get("halted"):
        holder = owner.get("holder")
        return holder is not None and not pid_alive(int(holder["pid"]), holder.get("start_ticks"))
    return not pid_alive(int(owner["pid"]), owner.get("start_ticks"))


def sweep_stale_workdirs(prefix: str, base_dir: Path | None = None) -> list[Path]:
    """Remove ``<tmp>/<prefix>*`` folders whose server is gone.

    Normally stop() removes its folder; this catches the ones left when the process that
    started a server was SIGKILLed (the server itself died with it: parent-death signal).
    Only folders with an owner record naming a dead process are touched (for a halted server,
    see record_halted).
    """
    base = base_dir if base_dir is not None else Path(tempfile.gettempdir())
    removed = []
    for folder in base.glob(f"{prefix}*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _stale(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class ServerProcess:
    """What the local servers share: one server process (our child, or recorded by pid and
    start time in ``dev up``'s state file) and a work folder removed when it stops."""

    pid: int | None
    start_ticks: int | None
    workdir: Path | None
    _proc: subprocess.Popen | None

    START_TIMEOUT_S = 60.0  # a subclass may need longer (the JVM broker)

    def __init__(self, *, detached: bool = False, base_dir: Path | str | None = None) -> None:
        self.detached = detached  # started by `dev up`: outlives this process
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.workdir = None
        self.pid = None
        self.start_ticks = None
        self.start_seconds: float | None = None
        self._proc = None
        self._t0 = 0.0
        self._cancelled = threading.Event()

    @property
    def host(self) -> str:
        return "127.0.0.1"  # every local server listens on loopback only

    def prepare(self, timeout: float) -> None:
        raise NotImplementedError

    def launch(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def start(self, timeout: float | None = None):
        """prepare() + launch() + wait_ready(); on any failure the process and files go."""
        timeout = self.START_TIMEOUT_S if timeout is None else timeout
        try:
            self.prepare(timeout)
            self.launch()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0, *, keep_files: bool = False) -> None:
        self._stop_graceful(timeout)
        self._remove_workdir(keep_files)

    # ------------------------------------------------------------------ faults on the same data
    # halt()/resume()/restart() keep the work folder (the data) and the ports: what a crashed or
    # restarted server of a real deployment keeps. The new process is spawned by the caller's
    # thread (see spawn: the parent-death signal is tied to it unless ``detached``).

    def halt(self, timeout: float = 30.0, *, kill: bool = False) -> None:
        """Stop the server process and keep its data: SIGTERM (a clean shutdown), or SIGKILL at
        once with ``kill=True`` (a crash). A frozen process is thawed first so it can exit."""
        if self.pid is None:
            return
        if self.workdir is not None:
            record_halted(self.workdir, detached=self.detached)
        self.thaw()
        if kill:
            self._stop_process(timeout, sig=signal.SIGKILL)
        else:
            self._stop_graceful(timeout)

    def _stop_graceful(self, timeout: float) -> None:
        """A subclass with its own clean shutdown (pg_ctl) overrides this."""
        self._stop_process(timeout)

    def resume(self, timeout: float | None = None) -> None:
        """Start the server again on the data and ports it had; return once it answers."""
        self.relaunch()
        self.wait_ready(self.START_TIMEOUT_S if timeout is None else timeout)

    def relaunch(self) -> None:
        """resume() without the wait: a new process on the kept folder (a cluster launches all
        its nodes, then waits for them together)."""
        if self.workdir is None or not self.workdir.is_dir():
            raise DevStackError("nothing to start again: the server's work folder is gone")
        if self.pid is not None and self.is_alive():
            raise DevStackError(f"the server is still running (pid {self.pid})")
        self._t0 = time.monotonic()  # wait_ready()'s timeout counts from here
        self._cancelled.clear()
        self.pid = None
        self._proc = None
        self.launch()

    def restart(self, timeout: float | None = None, *, kill: bool = False) -> None:
        """halt() then resume(): the same data, the same ports, a new pid."""
        self.halt(kill=kill)
        self.resume(timeout)

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its sockets open and answers nothing (a GC pause, a
        hung host). thaw() (SIGCONT) lets it go on."""
        if self.pid is None or not pid_alive(self.pid, self.start_ticks):
            raise DevStackError("the server is not running")
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.pid is not None and pid_alive(self.pid, self.start_ticks):
            os.kill(self.pid, signal.SIGCONT)

    def is_frozen(self) -> bool:
        return self.pid is not None and pid_state(self.pid) == "T"

    def is_alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid, self.start_ticks)

    def _stop_process(self, timeout: float, **stop_kwargs: Any) -> None:
        if self.pid is not None:
            self.thaw()  # a SIGSTOPped server would sit on SIGTERM until the SIGKILL deadline
            stop_tree(self.pid, start_ticks=self.start_ticks, timeout=timeout, popen=self._proc,
                      **stop_kwargs)
            self.pid = None
            self._proc = None

    def _remove_workdir(self, keep_files: bool) -> None:
        if self.workdir is not None and not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _process_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "workdir": str(self.workdir) if self.workdir else None,
        }

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
