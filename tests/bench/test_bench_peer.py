"""The peer benchmark's short form (bench/bench_peer.py): it runs end to end on the test stack's
broker and database, Celery + Redis beside our services, and reports every path. A benchmark, not
a timed test: nothing here judges the figures (docs/PERFORMANCE.md has them)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_peer.py"


@pytest.mark.timeout(300)
def test_the_peer_bench_runs_every_path_and_reports_ratios(kafka_bootstrap: str, database_url: str) -> None:
    # `make test` installs both (`make bench-deps`): a missing one fails the run, it is not skipped.
    assert shutil.which("redis-server"), "redis-server is missing: run `make bench-deps`"
    assert importlib.util.find_spec("celery"), "celery (the bench extra) is missing: run `make bench-deps`"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    proc = subprocess.run([sys.executable, str(BENCH), "--count", "3", "--warmup", "2", "--json",
                           "--no-processors"], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["latency_ms"]) == {"celery", "kafka", "rest"}
    for name, stats in out["latency_ms"].items():
        assert stats["n"] == 3, name
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"], (name, stats)
    assert out["ratio_to_celery_p99"]["celery"] == 1.0
    assert out["ratio_to_celery_p99"]["kafka"] == round(
        out["latency_ms"]["kafka"]["p99"] / out["latency_ms"]["celery"]["p99"], 2)
    assert set(out["target"]) == {"kafka", "rest"}
    assert len(out["before"]["load"]) == 3
    cpu = out["machine_cpu"]  # the machine's busy % and steal % over the run, from /proc/stat
    assert cpu["busy_pct"] > 0 and cpu["steal_pct"] >= 0 and cpu["busy_pct"] + cpu["steal_pct"] <= 100
