"""bench/bench_backlog.py's memory verdict (a unit test on made-up samples): a service is flat by
its second-half PSS slope, since a process tree's RSS counts PostgreSQL's shared buffers once per
backend; the RSS slope stays in the output."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest


@pytest.fixture
def backlog(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The bench puts bench/ and the repository first on sys.path when imported: undone after.
    monkeypatch.setattr(sys, "path", list(sys.path))
    return importlib.import_module("bench.bench_backlog")


def _samples() -> list[dict]:
    # 121 samples, one a second. postgres: RSS +10 MiB/min (backends touching shared buffers),
    # PSS flat; processors: RSS and PSS +5 MiB/min (a real growth); api: both flat.
    return [{"t": float(t),
             "rss_mib": {"postgres": 100 + t / 6, "processors": 200 + t / 12, "api": 90.0},
             "pss_mib": {"postgres": 40.0, "processors": 180 + t / 12, "api": 80.0}}
            for t in range(121)]


def test_the_verdict_is_the_pss_slope_and_the_rss_slope_is_still_reported(backlog: ModuleType) -> None:
    assert backlog.FLAT_MEASURE == "pss_slope_mib_per_min"
    out = backlog.memory_report(_samples(), 0.0, 120.0, rate=50.0, flat_mib_per_min=2.0)
    assert out["postgres"]["slope_mib_per_min"] == 10.0 and out["postgres"]["pss_slope_mib_per_min"] == 0.0
    assert out["postgres"]["flat"] is True  # not flat by RSS, flat by PSS
    assert out["processors"]["pss_slope_mib_per_min"] == 5.0 and out["processors"]["flat"] is False
    assert out["api"]["flat"] is True
    # the second half only: 61 samples from t = 60 s
    assert {m["samples"] for m in out.values()} == {61}
