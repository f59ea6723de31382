"""CPU time and resident memory of the deployment's processes, by service: the one sampler
(:meth:`ProcessSet.sample`) of bench_load.py and bench_backlog.py, so both report the same fields.

A service is a process and its descendants, summed: a worker runs its handlers in a supervised
child process (``WORKER_EXECUTION=supervised``), PostgreSQL is a postmaster and one backend per
connection, the API may fork. RSS of a tree counts a page shared by two of its processes twice
(PostgreSQL's shared buffers, touched by each backend): for PostgreSQL the figure is an upper
bound, and it grows while backends touch more of the buffers, up to their fixed size; PSS counts
such a page once (bench_backlog.py's memory verdict judges PSS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass(frozen=True)
class TreeSample:
    """One reading of every service, by name: CPU seconds so far (user + system, every live
    process of the tree), RSS and PSS summed over the tree in MiB. The load and backlog benches
    both report these fields, from this one sampler."""

    cpu_s: dict[str, float]
    rss_mib: dict[str, float]
    pss_mib: dict[str, float]


def _read(proc: psutil.Process) -> tuple[float, int, int] | None:
    """(CPU seconds, RSS bytes, PSS bytes) of one process; None when it has exited. PSS splits
    a shared page between the processes sharing it, so a tree's PSS counts PostgreSQL's shared
    buffers once; where smaps cannot be read (another user's process) PSS falls back to RSS."""
    try:
        with proc.oneshot():
            t = proc.cpu_times()
            try:
                full = proc.memory_full_info()
                rss, pss = full.rss, full.pss
            except psutil.AccessDenied:
                rss = pss = proc.memory_info().rss
    except psutil.NoSuchProcess:  # exited between the listing and the read
        return None
    return t.user + t.system, rss, pss


class ProcessSet:
    """Named root pids (``None`` or a dead pid is left out: a broker not started here), each
    read as its process tree; ``alone``: named pids read without their descendants (the bench's
    own process, whose children are the services it started)."""

    def __init__(self, roots: dict[str, int | None], alone: dict[str, int] | None = None) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid is not None}
        self.alone = dict(alone or {})

    def _processes(self, name: str) -> list[psutil.Process]:
        if name in self.alone:
            try:
                return [psutil.Process(self.alone[name])]
            except psutil.NoSuchProcess:
                return []
        return _tree(self.roots[name])

    def sample(self) -> TreeSample:
        """Every service's CPU seconds, RSS and PSS now."""
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        pss: dict[str, float] = {}
        for name in (*self.roots, *self.alone):
            c, r, p = 0.0, 0, 0
            for proc in self._processes(name):
                if (read := _read(proc)) is not None:
                    c, r, p = c + read[0], r + read[1], p + read[2]
            cpu[name], rss[name], pss[name] = c, round(r / 2**20, 1), round(p / 2**20, 1)
        return TreeSample(cpu, rss, pss)


def cpu_percent(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Each service's CPU over a window, in % of one core (200 = both cores of this machine)."""
    return {name: round((after[name] - before.get(name, 0.0)) / wall_s * 100, 1)
            for name in after if wall_s > 0}


def saturated(cpu_pct: dict[str, float]) -> dict[str, Any]:
    """Which process limits the rate. A service running one Python thread of work cannot pass
    ~100 % of a core; the machine cannot pass ``cores`` x 100 %. ``busiest``: the service with
    the most CPU; ``machine_pct``: the sum; ``machine_bound``: the sum is within 15 % of the
    cores (everything waits for a core then, and the busiest is what to make cheaper)."""
    cores = os.cpu_count() or 1
    total = sum(cpu_pct.values())
    busiest = max(cpu_pct, key=lambda n: cpu_pct[n]) if cpu_pct else None
    return {"busiest": busiest, "busiest_pct": cpu_pct.get(busiest, 0.0) if busiest else 0.0,
            "machine_pct": round(total, 1), "cores": cores,
            "machine_bound": total >= 0.85 * cores * 100,
            "one_core_bound": [n for n, v in cpu_pct.items() if v >= 85.0]}


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """dy/dx of the least-squares line through the points (0 for fewer than two)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
