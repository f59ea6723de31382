"""The path benchmark's short form (bench/bench_path.py): it runs end to end on the test stack's
broker and database and reports every stage and every service's CPU. A benchmark, not a timed
test: nothing here judges the figures (docs/PERFORMANCE.md has them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_path.py"


@pytest.mark.timeout(300)
def test_the_path_bench_reports_each_stage_and_the_cpu_of_each_service(
        kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    proc = subprocess.run([sys.executable, str(BENCH), "--count", "5", "--warmup", "2", "--json",
                           "--no-processors"], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = out["stages_ms"]
    assert list(stages) == ["submit", "to_processing", "handler", "completed_rx", "total"]
    for name, s in stages.items():
        assert s["n"] == 5, name
        assert 0 <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (name, s)
    # The stages cut one round trip: none is longer than the whole.
    assert max(stages[n]["max"] for n in ("submit", "to_processing")) <= stages["total"]["max"]
    # Our services and the client (this stack's broker and database were not started by the
    # bench, so their processes are not its to read).
    assert {"projector", "api", "worker", "client"} <= set(out["cpu_ms_per_task"])
    assert out["cpu_ms_per_task"]["worker"] > 0
    assert out["cpu_ms_per_task_total"] == pytest.approx(sum(out["cpu_ms_per_task"].values()), abs=0.1)
    assert out["tasks_per_s"] > 0
