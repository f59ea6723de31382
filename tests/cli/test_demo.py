"""`make demo` runs `computectl demo`: it must run to the end, submit one task of each type
through the API, run each through a worker to COMPLETED, end with the API URL, a curl and every
task's final state from the API, and leave no process behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import psutil
import pytest

from cli.demo import _ended, _outcome
from schemas.enums import TaskType


@pytest.mark.parametrize(("task", "ended"), [
    ({"status": "QUEUED", "attempt": 1, "error": None}, False),
    ({"status": "PROCESSING", "attempt": 1, "error": None}, False),
    ({"status": "COMPLETED", "attempt": 1, "error": None}, True),
    ({"status": "CANCELLED", "attempt": 1, "error": None}, True),
    # a retry waits QUEUED with the last error: the demo keeps waiting; FAILED is final (issue 17)
    ({"status": "QUEUED", "attempt": 2, "error": {"code": "PROVIDER_ERROR", "message": "x"}}, False),
    ({"status": "FAILED", "attempt": 1, "error": {"code": "PROVIDER_ERROR", "message": "x"}}, True),
    ({"status": "FAILED", "attempt": 3, "error": {"code": "PROVIDER_ERROR", "message": "x"}}, True),
    ({"status": "FAILED", "attempt": 1, "error": {"code": "INVALID_INPUT", "message": "x"}}, True),
])
def test_a_task_has_ended_when_no_status_is_to_come(task, ended):
    assert _ended(task) is ended


def test_the_outcome_column_shows_urls_text_or_the_error():
    urls = {"output_urls": ["file:///r/a.png", "file:///r/b.png"], "result_text": None}
    assert _outcome({"result": urls, "error": None}) == "file:///r/a.png\nfile:///r/b.png"
    text = {"output_urls": [], "result_text": "a caption"}
    assert _outcome({"result": text, "error": None}) == "text: 'a caption'"
    error = {"code": "INVALID_INPUT", "message": "no such image"}
    assert _outcome({"result": None, "error": error}) == "INVALID_INPUT: no such image"


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


def _rows(part: str, task_type: TaskType) -> list[list[str]]:
    """The cells of the table rows of ``part`` that start with ``task_type``."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in part.splitlines()
            if line.startswith(f"│ {task_type.value} ")]


@pytest.mark.integration
def test_demo_runs_the_main_flow_and_stops_everything(demo_tmp):
    done = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "demo"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "TMPDIR": demo_tmp},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = done.stdout
    assert f"RESULTS_URL=file://{demo_tmp}" in out  # the stack did live in our folder
    # Submitted through the API, with a key of the demo tenant; read back from the topics.
    read_back = out[out.index("tasks read back from their per-type topics"):]
    ids = {}
    for task_type in TaskType:
        [row] = _rows(read_back[:read_back.index("idempotency")], task_type)
        ids[task_type] = row[1]
        assert row[3] == "demo", row  # origin_tenant_id stamped from the API key
    assert "the same task, idempotent_replay=True" in out
    assert "refused, nothing produced: 422" in out
    # Every task ran through the worker; its event stream tells the whole story.
    assert "tasks: 10 of 10 COMPLETED" in out
    histories = out[out.index("status events of each task"):]
    for task_type in TaskType:
        [row] = _rows(histories[:histories.index("processors:")], task_type)
        statuses = row[2].split(" → ")
        assert {"PENDING", "QUEUED", "PROCESSING"} <= set(statuses[:-1]), row
        assert statuses[-1] == "COMPLETED", row
    assert "processors: 10 of 10 tasks folded" in out and "{'COMPLETED': 10}" in out
    # One AGENTIC generation through the API: every prediction scored, decided and COMPLETED.
    generation = out[out.index("a generation: AGENTIC"):out.index("a workflow: four steps")]
    assert re.search(r"generation [0-9a-f-]{36}: COMPLETED", generation), generation
    assert "prediction 0: COMPLETED" in generation and "prediction 1: COMPLETED" in generation
    # The quality loop works on the offline models' noise: every first attempt is rejected as noisy
    # and retried with changed parameters (attempt 3: more steps and guidance), and when nothing
    # passes the best attempt is accepted.
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in generation.splitlines()
            if line.startswith("│ ") and not line.startswith("│  ")]  # not a folded line's rest
    assert len(rows) == 6, generation  # 2 predictions x 3 attempts
    for prediction in ("0", "1"):
        attempts = [r for r in rows if r[0] == prediction]
        assert [r[7] for r in attempts] == ["RETRY", "RETRY", "ACCEPT_BEST"], generation
        assert all(float(r[6]) < 0.7 and "noisy" in r[8] for r in attempts), generation
        assert attempts[2][4:6] == ["45", "8.0"], generation  # the third rung: more steps, guidance
        assert sum(r[1].endswith("✓") for r in attempts) == 1, generation
    # The four-step workflow: every step COMPLETED, each on its parent's result.
    workflow = out[out.index("a workflow: four steps"):out.index("the API")]
    assert re.search(r"workflow [0-9a-f-]{36}: COMPLETED", workflow), workflow
    steps = [[c.strip() for c in line.split("│")[1:-1]] for line in workflow.splitlines()
             if line.startswith("│ ") and not line.startswith("│  ")]
    assert [(r[0], r[1], r[2]) for r in steps] == [
        ("generate", "GENERATION", "COMPLETED"), ("refine", "REFINE", "COMPLETED"),
        ("cutout", "BACKGROUND_REMOVE", "COMPLETED"), ("adjust", "IMAGE_ADJUSTER", "COMPLETED")], workflow
    assert all(r[5].startswith("file://") for r in steps), workflow
    # The end: the API URL, a ready-made curl with the real key, every task's final state.
    final = out[out.index("the API"):]
    api_url = re.search(r"^API: (http://127\.0\.0\.1:\d+) ", final, re.M).group(1)
    key = re.search(r"COMPUTE_API_KEY=(csk_\S+)", final).group(1)
    assert (f"curl -s -H 'Authorization: Bearer {key}' "
            f"{api_url}/api/v1/tasks/{ids[TaskType.GENERATION]}") in final
    for task_type in TaskType:
        [row] = _rows(final, task_type)
        assert row[1:4] == [ids[task_type], "COMPLETED", "1"], row
        assert row[4].endswith("s") and row[5], row  # a duration, a result
    # The web console's URL with a one-time login link for the demo tenant (docs/CONSOLE.md).
    assert re.search(rf"^console: {re.escape(api_url)}/console/ - one-time login .*: "
                     rf"{re.escape(api_url)}/console/login/[\w-]{{20,}} ", final, re.M), final
    # ...then everything stops cleanly.
    assert "stopped: worker (clean), processors (clean), api (clean)" in out
    assert "'healthy': True" in out
    assert int(re.search(r"'completed': (\d+)", out).group(1)) >= 12  # ten tasks, 2+ attempts
    assert "nothing left running" in out
    assert _processes_using(demo_tmp) == []
