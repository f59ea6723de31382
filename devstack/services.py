"""The supervisor behind ``computectl up``: runs the system's services as its children, restarts
one that exits, and stops them all on SIGTERM.

    python -m devstack.services <config.json>

The config (written by ``computectl up``, devstack/system.py) names each service and its
command line, the restart policy, the log folder and the state file. Every service is spawned
with procs.spawn(): a session of its own (a Ctrl-C or a signal to one group reaches only that
service), stdout and stderr appended to ``<logs>/<name>.log``, and the parent-death signal, so a
SIGKILLed supervisor takes its services with it. The supervisor is the only writer of the state
file (pid, state, restarts, start time and log of each service; ``computectl ps`` reads it).

A service that exits, for whatever reason and with whatever code, is started again after a
backoff; one that exits more than ``max_restarts`` times within ``window_s`` is marked failed and
left down (``ps`` says so, with its last exit). SIGTERM or SIGINT: every service gets SIGTERM at
once, SIGKILL after ``stop_grace_s``, and the supervisor exits 0 once all are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack.procs import (
    DevStackError,
    kill_group_leftovers,
    pid_alive,
    proc_start_ticks,
    spawn,
    stop_tree,
)

# How often the supervisor looks at its children: a dead service is noticed within this.
POLL_S = 0.2


@dataclass(frozen=True)
class RestartPolicy:
    # More exits than this within window_s and the service is marked failed: a service that
    # cannot start (a bad setting, a missing model) stops burning the CPU and says so in `ps`.
    max_restarts: int = 5
    window_s: float = 60.0
    # The first restart waits backoff_s, each further one within the window twice as long: a
    # broker that is briefly away is retried quickly, a crash loop slows down.
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    # SIGTERM to SIGKILL: the worker finishes its running task within its own shutdown grace
    # (WORKER_SHUTDOWN_GRACE_S, 30 s by default), so a little more than that.
    stop_grace_s: float = 40.0


def restart_delay(exits: Sequence[float], now: float, policy: RestartPolicy) -> float | None:
    """Seconds to wait before starting a service again, given the (monotonic) times of its exits,
    the latest one included; None when it exited more than ``max_restarts`` times within the
    window: it is failed."""
    recent = sum(1 for t in exits if now - t < policy.window_s)
    if recent > policy.max_restarts:
        return None
    return min(policy.backoff_s * 2 ** max(recent - 1, 0), policy.max_backoff_s)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # over the supervisor's environment


@dataclass
class Service:
    """One supervised service: its spec, its current process, and what ``ps`` shows."""

    spec: ServiceSpec
    log: Path
    state: str = "starting"  # running | backoff | failed | stopped
    pid: int | None = None
    start_ticks: int | None = None
    started_at: float | None = None  # wall clock, for the uptime in `ps`
    restarts: int = 0
    last_exit: int | None = None  # the exit code; negative: killed by that signal
    exits: list[float] = field(default_factory=list)  # monotonic
    restart_at: float | None = None  # monotonic, while in backoff
    proc: Any = None

    def public(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "state": self.state,
                "started_at": self.started_at, "restarts": self.restarts,
                "last_exit": self.last_exit, "log": str(self.log), "argv": self.spec.argv}


class Supervisor:
    def __init__(self, specs: Sequence[ServiceSpec], *, logs_dir: Path, state_file: Path,
                 policy: RestartPolicy, extra: dict[str, Any] | None = None) -> None:
        self.policy, self.state_file, self.extra = policy, state_file, extra or {}
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.services = [Service(s, logs_dir / f"{s.name}.log") for s in specs]
        self.state = "running"
        self.started_at = time.time()

    def run(self, stop: threading.Event) -> None:
        """Start every service, keep them running until ``stop`` is set, then stop them all."""
        try:
            for service in self.services:
                self._start(service)
            self._write()
            while not stop.wait(POLL_S):
                if self._tick(time.monotonic()):
                    self._write()
        finally:
            self.state = "stopping"
            self._write()
            self._stop_all()
            self.state = "stopped"
            self._write()

    def _tick(self, now: float) -> bool:
        changed = False
        for service in self.services:
            if service.state == "running" and service.proc.poll() is not None:
                self._exited(service, now)
                changed = True
            elif service.state == "backoff" and now >= (service.restart_at or 0.0):
                self._start(service)
                changed = True
        return changed

    def _start(self, service: Service) -> None:
        if service.state == "backoff":
            service.restarts += 1
        _note(service, f"starting {' '.join(service.spec.argv)}"
              + (f" (restart {service.restarts})" if service.restarts else ""))
        try:
            proc = spawn(service.spec.argv, log_path=service.log, detached=False,
                         env={**os.environ, **service.spec.env})
        except DevStackError as exc:  # counted as an exit: the same backoff and limit apply
            _note(service, str(exc))
            service.proc = None
            self._exited(service, time.monotonic())
            return
        service.proc, service.pid = proc, proc.pid
        service.start_ticks = proc_start_ticks(proc.pid)
        service.started_at = time.time()
        service.state, service.restart_at = "running", None

    def _exited(self, service: Service, now: float) -> None:
        code = None if service.proc is None else service.proc.returncode
        if service.pid is not None:
            kill_group_leftovers(service.pid)  # e.g. the worker's handler process
        service.last_exit, service.pid, service.start_ticks = code, None, None
        service.started_at = service.proc = None
        service.exits = [t for t in service.exits if now - t < self.policy.window_s] + [now]
        delay = restart_delay(service.exits, now, self.policy)
        how = "did not start" if code is None else (
            f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}")
        if delay is None:
            service.state = "failed"
            _note(service, f"{service.spec.name} {how}; {len(service.exits)} exits within "
                  f"{self.policy.window_s:.0f}s: marked failed, not restarted (see above)")
        else:
            service.state, service.restart_at = "backoff", now + delay
            _note(service, f"{service.spec.name} {how}; restarting in {delay:.1f}s")

    def _stop_all(self) -> None:
        running = [s for s in self.services if s.proc is not None and s.pid is not None]

        def stop(service: Service) -> None:
            try:
                stop_tree(service.pid, start_ticks=service.start_ticks, popen=service.proc,
                          timeout=self.policy.stop_grace_s)
            except DevStackError as exc:
                _note(service, f"stopping: {exc}")
            code = service.proc.poll()
            _note(service, f"stopped (exit {code})")
            service.last_exit, service.proc, service.pid = code, None, None

        if running:  # at once: the slowest service's grace, not the sum of them
            with ThreadPoolExecutor(max_workers=len(running), thread_name_prefix="stop") as pool:
                list(pool.map(stop, running))
        for service in self.services:
            service.state = "stopped"

    def _write(self) -> None:
        doc = {"supervisor": {"pid": os.getpid(), "start_ticks": proc_start_ticks(os.getpid()),
                              "state": self.state, "started_at": self.started_at},
               "policy": asdict(self.policy),
               "services": {s.spec.name: s.public() for s in self.services}, **self.extra}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.state_file)


def _note(service: Service, text: str) -> None:
    """A line in the service's own log and in the supervisor's (its stdout)."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [supervisor] {text}\n"
    with open(service.log, "a") as log:
        log.write(line)
    sys.stdout.write(f"{service.spec.name}: {line}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the state file

def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None  # not written yet, or left by a supervisor that is gone


def supervisor_alive(state: dict[str, Any] | None) -> bool:
    sup = (state or {}).get("supervisor") or {}
    return bool(sup.get("pid")) and pid_alive(sup["pid"], sup.get("start_ticks"))


def recorded_pids(state: dict[str, Any]) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of the supervisor and of every service it last recorded."""
    pids = [(s["pid"], s.get("start_ticks")) for s in state.get("services", {}).values()
            if s.get("pid")]
    sup = state.get("supervisor") or {}
    return ([(sup["pid"], sup.get("start_ticks"))] if sup.get("pid") else []) + pids


def stop_supervisor(state: dict[str, Any]) -> list[str]:
    """SIGTERM the supervisor (it stops its services), SIGKILL it past its grace, then make sure
    no recorded service is left (each also gets SIGTERM from the parent-death signal if the
    supervisor died first). Returns a problem per process still found."""
    grace = float(state.get("policy", {}).get("stop_grace_s", RestartPolicy.stop_grace_s))
    problems: list[str] = []
    for pid, ticks in recorded_pids(state):  # the supervisor first
        try:
            stop_tree(pid, start_ticks=ticks, timeout=grace + 10.0)
        except DevStackError as exc:
            problems.append(str(exc))
    problems += [f"pid {pid} is still running" for pid, ticks in recorded_pids(state)
                 if pid_alive(pid, ticks)]
    return problems


# --------------------------------------------------------------------------- the process

def main(argv: Sequence[str] | None = None) -> None:
    [config_path] = argv if argv is not None else sys.argv[1:]
    config = json.loads(Path(config_path).read_text())
    supervisor = Supervisor(
        [ServiceSpec(s["name"], list(s["argv"]), dict(s.get("env", {}))) for s in config["services"]],
        logs_dir=Path(config["logs_dir"]), state_file=Path(config["state_file"]),
        policy=RestartPolicy(**config.get("policy", {})), extra=config.get("extra"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run(stop)


if __name__ == "__main__":
    main()
