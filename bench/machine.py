"""The machine's state around a benchmark run: one function for every bench that reports
``before``/``after`` (api_latency, peer, load, backlog, fold, submit, decode).

This machine is a VM on an oversubscribed host: the ``cpu`` line of /proc/stat shows 15-25 %
*steal* (time a virtual core wanted to run while the host ran another guest) even when the load
average is below 1. The load average does not see steal, so two runs are comparable only when the
steal over each is known: a state records /proc/stat's cpu counters beside the load, and
:func:`cpu_between` turns two states into the machine's busy % and steal % over the run.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

# The first eight counters of /proc/stat's ``cpu`` line (all cores summed, in USER_HZ ticks).
# guest and guest_nice, the 9th and 10th, are already counted inside user and nice: left out, so
# that the sum of these eight is all the time there was.
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# What psutil's cpu_times and top call busy: running something, in this guest.
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")


def cpu_counters(stat: str = "/proc/stat") -> dict[str, int]:
    """The ``cpu`` line's counters by name; empty where there is no /proc/stat (not Linux)."""
    try:
        with open(stat) as f:
            line = f.readline().split()
    except OSError:
        return {}
    if not line or line[0] != "cpu":
        return {}
    return dict(zip(CPU_FIELDS, map(int, line[1:1 + len(CPU_FIELDS)])))


def machine_state() -> dict[str, Any]:
    """When, the load average (1, 5, 15 min) and the cpu counters, taken now."""
    return {"at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "load": [round(x, 2) for x in os.getloadavg()], "cpu": cpu_counters()}


def cpu_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float] | None:
    """The machine's CPU between two states, everything on it (other sessions included):
    ``busy_pct`` and ``steal_pct`` in % of all cores' time (100 = every core the whole time),
    ``busy_cpu_s`` the busy core-seconds. None without two readings that differ."""
    b, a = before.get("cpu"), after.get("cpu")
    if not b or not a:
        return None
    delta = {f: a.get(f, 0) - b.get(f, 0) for f in CPU_FIELDS}
    total = sum(delta.values())
    if total <= 0:  # the two readings within one tick
        return None
    busy = sum(delta[f] for f in BUSY_FIELDS)
    return {"busy_pct": round(busy / total * 100, 1), "steal_pct": round(delta["steal"] / total * 100, 1),
            "busy_cpu_s": round(busy / os.sysconf("SC_CLK_TCK"), 2)}


def describe(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The two states for a table line: the load average at both ends, busy and steal between."""
    cpu = cpu_between(before, after)
    over = (f"machine busy {cpu['busy_pct']} %, steal {cpu['steal_pct']} % of {os.cpu_count()} cores"
            if cpu else "machine busy and steal unknown (no /proc/stat)")
    return f"load {before['load']} -> {after['load']}; {over}"
