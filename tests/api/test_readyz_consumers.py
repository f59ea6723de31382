"""/readyz and /healthz tell the truth about the consumers (issue 15: the API said ready while
the projector had stalled for minutes). The reports are the files the projector's and the
processors' watchdogs write (state/consumer_watchdog.py; their own tests provoke real stalls)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx

from schemas.consumer_health import Action, Verdict
from state.consumer_watchdog import LOCAL, Report
from tests.api.conftest import ApiStack

HEALTH_DIR = Path(tempfile.mkdtemp(prefix="health-"))
API_SETTINGS = {"health_dir": HEALTH_DIR, "consumer_stale_after_s": 20.0,
                "consumer_forget_after_s": 120.0}


def write(name: str, *, ready: bool, reason: str = "", age_s: float = 0.0,
          action: str = "none") -> None:
    (HEALTH_DIR / f"{name}.json").write_text(json.dumps(
        {"name": name, "pid": 1, "at": time.time() - age_s, "ready": ready, "action": action,
         "reason": reason, "stalled": []}))


def test_readyz_follows_the_consumers_reports(api: ApiStack, client: httpx.Client) -> None:
    for path in HEALTH_DIR.glob("*.json"):
        path.unlink()
    write("projector", ready=True)
    write("processors", ready=True)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": "ok", "kafka": "ok", "consumer:projector": "ok",
                                      "consumer:processors": "ok"}

    write("projector", ready=False, reason="no partition assigned; committed offsets ...",
          action="recreate")
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "consumer:projector not-ready: no partition assigned" in answer.json()["detail"]

    write("projector", ready=True, age_s=30)  # its process hung or died: no fresh report
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "consumer:projector stale" in answer.json()["detail"]

    write("projector", ready=True, age_s=300)  # removed for good long ago: not waited for
    assert client.get("/readyz").json()["checks"] == {
        "postgres": "ok", "kafka": "ok", "consumer:processors": "ok"}
    for path in HEALTH_DIR.glob("*.json"):
        path.unlink()


def test_healthz_fails_once_a_consumer_inside_the_process_gave_up(api: ApiStack,
                                                                   client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    LOCAL["embedded-projector"] = Report("embedded-projector",
                                         Verdict(False, Action.EXIT, "no progress"))
    try:
        answer = client.get("/healthz")
        assert answer.status_code == 503 and "embedded-projector" in answer.json()["detail"]
        assert client.get("/readyz").status_code == 503
    finally:
        del LOCAL["embedded-projector"]
    assert client.get("/healthz").status_code == 200
