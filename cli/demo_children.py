"""The demo's own processes: ``computectl worker``, ``processors`` and ``api``, started and stopped
as one group.

Each runs as ``computectl`` would from a shell: the same Python, the stack's environment, its
output in a log file. They are spawned with the local stack's helper, so each is in a session of
its own (a Ctrl-C in the terminal reaches only the demo, which then stops them in order) and
gets SIGTERM if the demo itself dies, so not even a killed demo leaves one behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import spawn, tail
from devstack.system import COMPUTECTL


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.log, lines)

    def last_json_line(self) -> dict | None:
        """The last line of the log that is a JSON object (the worker's final counters)."""
        for line in reversed(tail(self.log, 200).splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return None


class Children:
    """Start named ``computectl`` commands in ``workdir`` (their cwd and log folder); stop all."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.started: dict[str, Child] = {}

    def start(self, name: str, *args: str) -> Child:
        log = self.workdir / f"{name}.log"
        proc = spawn([*COMPUTECTL, *args], log_path=log, detached=False, env=self.env,
                     cwd=self.workdir)
        child = self.started[name] = Child(name, proc, log)
        return child

    def died(self, *names: str) -> str | None:
        """The first of ``names`` (default: all) that exited, with the end of its log; None
        while they all run."""
        for child in self.started.values():
            if names and child.name not in names:
                continue
            code = child.proc.poll()
            if code is not None:
                return f"{child.name} exited with code {code}; the end of its log:\n" + (
                    child.log_tail())
        return None

    def stop(self, timeout: float = 60.0) -> dict[str, str]:
        """SIGTERM every child at once (each stops cleanly: the worker after its current task,
        the processors after a commit, the API after its requests and embedded projector),
        wait for all against one deadline, SIGKILL what is left. Returns how each ended:
        "clean", or what went wrong."""
        running = [c for c in self.started.values() if c.proc.poll() is None]
        for child in running:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = set()
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
                killed.add(child.name)
        return {name: f"killed: no stop within {timeout:.0f}s" if name in killed
                else _how_it_ended(c) for name, c in self.started.items()}


def _how_it_ended(child: Child) -> str:
    code = child.proc.returncode
    # uvicorn re-raises the SIGTERM it caught once its shutdown is complete, so a cleanly
    # stopped API dies "by" SIGTERM.
    if code == 0 or (code == -signal.SIGTERM and child.name == "api"):
        return "clean"
    return f"exit {code}" if code >= 0 else f"killed by signal {-code}"


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # spawn() made each child a session (and process group) leader: pgid == pid, so whatever
    # it started itself is stopped with it. Only called while the leader has not been reaped.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
