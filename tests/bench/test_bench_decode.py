"""The decode benchmark (bench/bench_decode.py) runs and reports every event and every column
(its own check: fastavro and the generated reader return equal records). Not timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_decode.py"


def test_the_decode_bench_reports_each_event_and_path() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--number", "20", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out["events"]) == {"GenerationTaskSubmitted", "StatusChanged (QUEUED)", "StatusChanged (COMPLETED)"}
    for row in out["events"].values():
        assert row["bytes"] > 0
        assert all(row[c] > 0 for c in ("fastavro", "compiled", "decode_dict", "decode", "encode"))
    cpu = out["machine_cpu"]  # the machine's busy % and steal % over the run, from /proc/stat
    assert cpu["busy_pct"] > 0 and cpu["steal_pct"] >= 0 and cpu["busy_pct"] + cpu["steal_pct"] <= 100
