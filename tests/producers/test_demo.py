"""`make demo` runs `computectl demo`: it must run to the end, run one task of each type through a
worker to COMPLETED, and leave no process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import psutil
import pytest

from schemas.enums import TaskType

pytestmark = pytest.mark.integration


def _processes_using(folder: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if folder in cmd or (proc.info["cwd"] or "").startswith(folder):
            found.append(f"{proc.info['pid']}: {cmd[:120]}")
    return found


@pytest.fixture
def demo_tmp():
    # The demo's components keep their files under TMPDIR; a folder of our own tells its
    # processes apart from other stacks on the machine. PostgreSQL runs as an unprivileged
    # user, who must be able to enter it.
    folder = tempfile.mkdtemp(prefix="demo-test-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_runs_the_main_flow_and_stops_everything(demo_tmp):
    done = subprocess.run(
        [sys.executable, "-c", "from producers.cli import main; main()", "demo"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "TMPDIR": demo_tmp},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert out.count("PENDING → QUEUED") == 10
    assert "the same task" in out and "refused, nothing produced" in out
    # The workers part: one task of each type through a `computectl worker` process.
    assert "workers: 10 of 10 tasks COMPLETED" in out
    part = out[out.index("workers: one task of each type"):]
    for task_type in TaskType:  # the results table: one row per type, its folded final status
        [row] = [line for line in part.splitlines() if line.startswith(f"│ {task_type.value} ")]
        assert row.split("│")[2].strip() == "COMPLETED", row
    assert "'healthy': True" in out and "'completed': 10" in out
    assert "nothing left running" in out
    assert f"RESULTS_URL=file://{demo_tmp}" in out  # the stack did live in our folder
    assert _processes_using(demo_tmp) == []
