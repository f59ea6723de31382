"""The short forms of the load and backlog benchmarks (bench/bench_load.py, bench/bench_backlog.py,
issue 19): each runs end to end on the test stack's broker and database and reports well-formed
figures. Benchmarks, not timed tests: nothing here judges a rate or a latency (docs/PERFORMANCE.md
has the figures); what is checked is that the figures are there and agree with each other. The
workers run inline (WORKER_EXECUTION=inline): a supervised worker spends tens of seconds starting
its handler process, and how the task runs is not what these tests are about."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, args: list[str], kafka_bootstrap: str, database_url: str) -> dict:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--no-processors", "--json"],
                          env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_the_load_bench_reports_every_worker_count(kafka_bootstrap: str, database_url: str) -> None:
    out = _run("bench_load.py", ["--clients", "3", "--duration", "1.5", "--warmup", "0", "--workers", "1", "2",
                "--set", "WORKER_EXECUTION=inline"],
               kafka_bootstrap, database_url)
    assert [r["workers"] for r in out["runs"]] == [1, 2]
    for run in out["runs"]:
        assert run["failed"] == 0, run["failures"]
        assert run["tasks"] > 0 and run["tasks_per_s"] == pytest.approx(run["tasks"] / run["duration_s"], rel=0.1)
        lat = run["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
        assert run["api_cpu_ms_per_task"] > 0
        workers = sorted(n for n in run["cpu_pct"] if n.startswith("worker") and n != "workers")
        assert workers == [f"worker{i}" for i in range(1, run["workers"] + 1)]
        assert {"api", "projector", "clients", "workers"} <= set(run["cpu_pct"])
        assert run["saturation"]["busiest"] in run["cpu_pct"]
        assert len(run["before"]["load"]) == 3
        # one sampler: every service (the clients too) has CPU, RSS and PSS
        assert set(run["rss_mib"]) == set(run["pss_mib"]) == set(run["cpu_pct"]) - {"workers"}
        assert all(0 < run["pss_mib"][n] <= run["rss_mib"][n] for n in run["rss_mib"])
        _check_machine_cpu(run["machine_cpu"])
        assert run["machine_cpu_pct"] == pytest.approx(
            run["machine_cpu"]["busy_cpu_s"] / run["duration_s"] * 100, rel=0.05, abs=1)
    _check_machine_cpu(out["machine_cpu"])


def _check_machine_cpu(cpu: dict) -> None:
    """The machine's busy % and steal % between two /proc/stat readings: shares of all the time."""
    assert set(cpu) == {"busy_pct", "steal_pct", "busy_cpu_s"}
    assert cpu["busy_pct"] > 0 and cpu["steal_pct"] >= 0 and cpu["busy_pct"] + cpu["steal_pct"] <= 100


@pytest.mark.timeout(300)
def test_the_backlog_bench_drains_and_records_the_memory_curve(kafka_bootstrap: str, database_url: str,
                                                                tmp_path: Path) -> None:
    curve = tmp_path / "curve.csv"
    out = _run("bench_backlog.py", ["--tasks", "40", "--workers", "2", "--interval", "0.5", "--curve", str(curve),
                "--set", "WORKER_EXECUTION=inline"],
               kafka_bootstrap, database_url)
    assert out["failed"] == 0
    assert out["worker_names"] == ["worker1", "worker2"]
    assert out["drain_s"] > 0 and out["drain_per_s"] == pytest.approx(40 / out["drain_s"], rel=0.1)
    last = out["curve"][-1]
    assert last["phase"] == "drained" and last["completed"] == 40 and last["lag"] == 0
    assert [s["phase"] for s in out["curve"]][0] == "submit"
    assert {"api", "projector", "worker1", "worker2"} <= set(out["memory"])
    assert out["memory_flat_measure"] == "pss_slope_mib_per_min"
    for name, mem in out["memory"].items():
        assert mem["flat"] == (abs(mem["pss_slope_mib_per_min"]) < out["flat_mib_per_min"]), name
        assert mem["end_mib"] > 0 and "slope_mib_per_min" in mem, name
    assert out["memory_flat"] == all(m["flat"] for m in out["memory"].values())
    # one sampler, the load bench's fields: CPU seconds, RSS and PSS of every service in each sample
    assert all(set(s["cpu_s"]) == set(s["rss_mib"]) == set(s["pss_mib"]) for s in out["curve"])
    assert set(out["cpu_pct"]) <= set(out["memory"])
    _check_machine_cpu(out["machine_cpu"])
    rows = curve.read_text().splitlines()
    assert rows[0].startswith("t_s,phase,lag,rows,completed,failed,load1,")
    assert rows[0].endswith("_cpu_s")
    assert len(rows) == len(out["curve"]) + 1
