"""The benches' shared machine state (bench/machine.py): /proc/stat's cpu counters, and the busy %
and steal % between two readings; the one process sampler (bench/proc_sample.py). Unit tests, on
made-up /proc/stat lines and this process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.machine import CPU_FIELDS, cpu_between, cpu_counters, describe, machine_state
from bench.proc_sample import ProcessSet


def _stat(tmp_path: Path, name: str, values: list[int]) -> dict[str, int]:
    path = tmp_path / name
    # guest and guest_nice (the last two) are inside user and nice: never added again.
    path.write_text("cpu  " + " ".join(map(str, values)) + " 999 999\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    return cpu_counters(str(path))


def test_the_cpu_line_is_read_by_name(tmp_path: Path) -> None:
    assert _stat(tmp_path, "stat", [1, 2, 3, 4, 5, 6, 7, 8]) == dict(zip(CPU_FIELDS, range(1, 9)))
    assert cpu_counters(str(tmp_path / "missing")) == {}


def test_busy_and_steal_are_shares_of_all_the_time_between_two_readings(tmp_path: Path) -> None:
    before = {"load": [0.5, 0.5, 0.5], "cpu": _stat(tmp_path, "a", [100, 0, 50, 1000, 0, 0, 0, 10])}
    # 400 ticks pass: user 100 + nice 10 + system 20 + irq 5 + softirq 5 busy, idle 150, iowait 30, steal 80.
    after = {"load": [0.7, 0.5, 0.5], "cpu": _stat(tmp_path, "b", [200, 10, 70, 1150, 30, 5, 5, 90])}
    cpu = cpu_between(before, after)
    assert cpu is not None
    assert cpu["busy_pct"] == 35.0 and cpu["steal_pct"] == 20.0
    assert cpu["busy_cpu_s"] == round(140 / os.sysconf("SC_CLK_TCK"), 2)
    assert describe(before, after).startswith("load [0.5, 0.5, 0.5] -> [0.7, 0.5, 0.5]; machine busy 35.0 %, steal 20.0 %")
    assert cpu_between(before, before) is None  # no tick between
    assert cpu_between({"load": [0.0] * 3, "cpu": {}}, after) is None  # no /proc/stat
    assert "unknown" in describe({"load": [0.0] * 3}, after)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux only")
def test_a_state_of_this_machine_has_its_counters() -> None:
    state = machine_state()
    assert len(state["load"]) == 3 and set(state["cpu"]) == set(CPU_FIELDS)
    deadline = time.monotonic() + 10

    def busy_seen() -> dict[str, float] | None:
        # The first tick that passes can be the other core's idle time: work until a busy one has.
        cpu = cpu_between(state, machine_state())
        return cpu if cpu is not None and cpu["busy_cpu_s"] > 0 else None

    while (cpu := busy_seen()) is None and time.monotonic() < deadline:
        sum(range(100_000))
    assert cpu is not None and cpu["steal_pct"] >= 0 and cpu["busy_pct"] > 0
    assert cpu["busy_pct"] + cpu["steal_pct"] <= 100.1  # each rounded to 0.1


def test_the_sampler_reads_a_tree_or_a_process_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        procs = ProcessSet({"tree": os.getpid(), "gone": None}, alone={"alone": os.getpid()})
        s = procs.sample()
        assert set(s.cpu_s) == set(s.rss_mib) == set(s.pss_mib) == {"tree", "alone"}
        # The tree is this process and its child (a Python interpreter: some MiB of its own).
        assert s.rss_mib["tree"] > s.rss_mib["alone"] > 0
        assert s.cpu_s["alone"] > 0
        assert all(s.pss_mib[n] <= s.rss_mib[n] for n in s.rss_mib)
    finally:
        child.communicate(timeout=30)
