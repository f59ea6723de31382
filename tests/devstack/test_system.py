"""``computectl up`` / ``ps`` / ``logs`` / ``down`` and the supervisor behind them, as real
processes: the module starts the whole system once (its own stack, in its own state folder), runs
tasks through the API, kills services and watches them come back, and stops it all.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devstack.procs import pid_alive, process_group_members, wait_until
from devstack.services import RestartPolicy, read_state, restart_delay

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPUTECTL = (sys.executable, "-c", "from cli.main import main; main()")
pytestmark = pytest.mark.integration

# A worker's first task includes its handler process's start; a busy two-core machine is slow.
TASK_DEADLINE_S = 120.0
RESTART_DEADLINE_S = 60.0


def computectl(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMPUTECTL, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def parse_exports(stdout: str) -> dict[str, str]:
    """Every stdout line is `export KEY=VALUE` (shell-quoted), or this fails."""
    exports = {}
    for line in stdout.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export", line
        key, value = assignment.split("=", 1)
        exports[key] = value
    return exports


def gone(pid: int, ticks: int | None = None) -> bool:
    return not pid_alive(pid, ticks) and not process_group_members(pid)


@dataclass
class System:
    state_dir: Path
    env: dict[str, str]
    up_stdout: str
    exports: dict[str, str]

    def ps(self) -> dict[str, Any]:
        out = computectl("ps", "--json", env=self.env)
        return json.loads(out.stdout)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.exports["COMPUTE_API_URL"], timeout=10.0,
                            headers={"Authorization": f"Bearer {self.exports['COMPUTE_API_KEY']}"})

    def run_task(self) -> str:
        """One IMAGE_ADJUSTER through the API, on an input in the stack's inputs folder;
        returns its id once it is COMPLETED."""
        image = Path(self.exports["INPUT_ALLOWED_FILE_ROOTS"]) / f"{uuid.uuid4().hex}.png"
        Image.new("RGB", (16, 16), (200, 30, 40)).save(image)
        with self.api() as api:
            resp = api.post("/api/v1/tasks", json={"task_type": "IMAGE_ADJUSTER", "brightness": 0.2,
                                                   "base_image_url": image.as_uri()})
            assert resp.status_code == 202, resp.text
            task_id = resp.json()["task_id"]
            seen: dict[str, Any] = {}

            def completed() -> bool:
                got = api.get(f"/api/v1/tasks/{task_id}")
                if got.status_code == 200:
                    seen.update(got.json())
                return seen.get("status") == "COMPLETED"

            assert wait_until(completed, TASK_DEADLINE_S, interval=0.25), (
                seen, computectl("logs", "-n", "30", env=self.env).stdout)
        return task_id


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    state_dir = tmp_path_factory.mktemp("up")
    env = {"COMPUTE_DEVSTACK_STATE_DIR": str(state_dir)}
    up = computectl("up", "--types", "image_adjuster", env=env)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        yield System(state_dir, env, up.stdout, parse_exports(up.stdout))
    finally:
        computectl("down", env=env)  # a no-op once test_down_leaves_nothing has run


def test_up_prints_exports_and_the_system_runs_a_task(system: System) -> None:
    exports = system.exports
    # Everything `dev env` prints (which now includes the API), and nothing else on stdout.
    dev_env = computectl("dev", "env", "--json", env=system.env)
    assert dev_env.returncode == 0, dev_env.stderr
    assert exports == json.loads(dev_env.stdout)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "S3_ENDPOINT_URL", "RESULTS_URL",
            "INPUT_ALLOWED_FILE_ROOTS", "COMPUTE_API_URL", "COMPUTE_API_KEY"} <= set(exports)
    assert httpx.get(f"{exports['COMPUTE_API_URL']}/readyz", timeout=10).status_code == 200
    system.run_task()

    status = system.ps()
    assert status["up"] is True and status["api_url"] == exports["COMPUTE_API_URL"]
    assert set(status["services"]) == {"worker", "processors", "projector", "api"}
    for name, service in status["services"].items():
        assert service["state"] == "running" and service["alive"], (name, service)
        assert service["restarts"] == 0 and Path(service["log"]).parent == system.state_dir / "logs"
    # The processors yield the CPU to the task path (PROCESSORS_CPU_NICE, 10); the rest keep
    # the supervisor's priority.
    base = os.getpriority(os.PRIO_PROCESS, status["supervisor"]["pid"])
    nice = {name: os.getpriority(os.PRIO_PROCESS, s["pid"]) for name, s in status["services"].items()}
    assert nice == {"worker": base, "projector": base, "api": base, "processors": min(base + 10, 19)}
    text = computectl("ps", env=system.env)
    assert text.returncode == 0 and "worker" in text.stdout and "running" in text.stdout


def test_a_second_up_prints_the_same_exports(system: System) -> None:
    supervisor = system.ps()["supervisor"]["pid"]
    again = computectl("up", env=system.env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == system.up_stdout
    assert "already up" in again.stderr
    assert system.ps()["supervisor"]["pid"] == supervisor
    key_file = system.state_dir / "apikey.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert json.loads(key_file.read_text())["key"] == system.exports["COMPUTE_API_KEY"]


def test_apikey_create_prints_export_lines_with_ups_api(system: System) -> None:
    # COMPUTE_API_URL unset: the URL comes from `up`, whose API serves this database.
    env = {**system.env, "DATABASE_URL": system.exports["DATABASE_URL"], "COMPUTE_API_URL": ""}
    exported = computectl("apikey", "create", "--tenant", "other", "--export", env=env)
    assert exported.returncode == 0, exported.stderr
    lines = parse_exports(exported.stdout)
    assert lines["COMPUTE_API_URL"] == system.exports["COMPUTE_API_URL"]
    with httpx.Client(base_url=lines["COMPUTE_API_URL"], timeout=10,
                      headers={"Authorization": f"Bearer {lines['COMPUTE_API_KEY']}"}) as api:
        assert api.get("/api/v1/tasks").json()["items"] == []  # a key of its own tenant
    # The plain form keeps stdout to the key (KEY=$(computectl apikey create ...)); the export
    # lines go to stderr beside the note.
    plain = computectl("apikey", "create", "--tenant", "other", env=env)
    [key] = plain.stdout.split()
    assert f"export COMPUTE_API_KEY={key}" in plain.stderr
    assert f"export COMPUTE_API_URL={system.exports['COMPUTE_API_URL']}" in plain.stderr
    # No `up` known for this database (another state folder): only the key is printed.
    other = computectl("apikey", "create", "--tenant", "other", "--export",
                       env={**env, "COMPUTE_DEVSTACK_STATE_DIR": str(system.state_dir / "none")})
    assert list(parse_exports(other.stdout)) == ["COMPUTE_API_KEY"]


def _kill_and_wait_for_restart(system: System, name: str) -> dict[str, Any]:
    before = system.ps()["services"][name]
    os.kill(before["pid"], signal.SIGKILL)
    after: dict[str, Any] = {}

    def restarted() -> bool:
        after.update(system.ps()["services"][name])
        return after["restarts"] == 1 and after["state"] == "running" and after["alive"]

    assert wait_until(restarted, RESTART_DEADLINE_S, interval=0.2), after
    assert after["pid"] != before["pid"]
    # The killed process and what it had started (the worker's handler process) are gone.
    assert wait_until(lambda: gone(before["pid"], before["start_ticks"]), 10), before
    return after


def test_a_killed_worker_is_restarted_and_runs_the_next_task(system: System) -> None:
    follow = subprocess.Popen([*COMPUTECTL, "logs", "worker", "--follow", "--lines", "1"],
                              cwd=REPO_ROOT, env={**os.environ, **system.env},
                              stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        # Its first line (the log's last one) says it is following: what comes next, it shows.
        assert lines.get(timeout=60)
        _kill_and_wait_for_restart(system, "worker")
        task_id = system.run_task()
        # `logs --follow` showed the supervisor's note and the new worker's own lines as they came.
        shown: list[str] = []
        deadline = time.monotonic() + 30
        while not any(f"task {task_id}" in line for line in shown) and time.monotonic() < deadline:
            try:
                shown.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        assert any("worker was killed by signal 9; restarting" in line for line in shown), shown
        assert any(f"task {task_id} attempt 1 completed" in line for line in shown), shown
    finally:
        follow.send_signal(signal.SIGINT)  # Ctrl-C is the way out of --follow, not an error
        assert follow.wait(30) == 0


def test_a_killed_api_is_restarted_on_the_same_url(system: System) -> None:
    _kill_and_wait_for_restart(system, "api")

    def ready() -> bool:
        try:
            return httpx.get(f"{system.exports['COMPUTE_API_URL']}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    assert wait_until(ready, RESTART_DEADLINE_S, interval=0.25)
    system.run_task()
    assert system.ps()["services"]["projector"]["restarts"] == 0  # only the killed one restarted


def test_logs(system: System) -> None:
    worker = computectl("logs", "worker", "--lines", "500", env=system.env)
    assert worker.returncode == 0, worker.stderr
    assert "gpu_consumers.worker" in worker.stdout and "serving image_adjuster" in worker.stdout
    assert "attempt 1 completed" in worker.stdout
    everything = computectl("logs", "--lines", "5", env=system.env)
    prefixes = {line.split("|", 1)[0].strip() for line in everything.stdout.splitlines()}
    assert {"worker", "processors", "projector", "api", "supervisor"} <= prefixes
    unknown = computectl("logs", "nosuch", env=system.env)
    assert unknown.returncode == 2 and "there are: api, processors" in unknown.stderr


def test_down_leaves_nothing(system: System) -> None:
    services = json.loads((system.state_dir / "services.json").read_text())
    stack = json.loads((system.state_dir / "state.json").read_text())
    pids = [(s["supervisor"]["pid"], s["supervisor"]["start_ticks"]) for s in (services,)]
    pids += [(s["pid"], s["start_ticks"]) for s in services["services"].values()]
    pids += [(c["pid"], c["start_ticks"]) for c in stack["components"].values()]
    assert len(pids) == 1 + 4 + 3 and all(pid_alive(p, t) for p, t in pids)

    down = computectl("down", env=system.env)
    assert down.returncode == 0, down.stderr
    assert [p for p, t in pids if not gone(p, t)] == []
    for name in ("services.json", "services-config.json", "apikey.json", "state.json"):
        assert not (system.state_dir / name).exists(), name
    after = computectl("ps", env=system.env)
    assert after.returncode == 1 and "no services are up" in after.stdout
    # The logs stay for a look afterwards.
    assert "attempt 1 completed" in computectl("logs", "worker", env=system.env).stdout
    assert computectl("dev", "env", env=system.env).returncode != 0


# ---------------------------------------------------------------------------- the supervisor alone

def test_restart_delay_backs_off_then_gives_up() -> None:
    policy = RestartPolicy(max_restarts=3, window_s=60.0, backoff_s=0.5, max_backoff_s=1.5)
    assert restart_delay([100.0], 100.0, policy) == 0.5
    assert restart_delay([90.0, 100.0], 100.0, policy) == 1.0
    assert restart_delay([80.0, 90.0, 100.0], 100.0, policy) == 1.5  # capped
    assert restart_delay([70.0, 80.0, 90.0, 100.0], 100.0, policy) is None  # a 4th exit: failed
    # Exits older than the window are forgotten: a service that crashes once an hour lives on.
    assert restart_delay([0.0, 10.0, 20.0, 100.0], 100.0, policy) == 0.5


def _supervise(tmp_path: Path, services: list[dict[str, Any]],
               policy: dict[str, float]) -> subprocess.Popen[bytes]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"services": services, "policy": policy,
                                  "logs_dir": str(tmp_path / "logs"),
                                  "state_file": str(tmp_path / "services.json"),
                                  "extra": {"api_url": None}}))
    return subprocess.Popen([sys.executable, "-m", "devstack.services", str(config)],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, start_new_session=True)


def test_a_crashing_service_is_marked_failed_and_sigterm_stops_the_rest(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, [
        {"name": "crasher", "argv": [sys.executable, "-c", "raise SystemExit(3)"]},
        {"name": "sleeper", "argv": [sys.executable, "-c", "import time; time.sleep(600)"]},
    ], {"max_restarts": 2, "window_s": 60.0, "backoff_s": 0.05, "max_backoff_s": 0.1})
    env = {"COMPUTE_DEVSTACK_STATE_DIR": str(tmp_path)}
    try:
        state: dict[str, Any] = {}

        def failed() -> bool:
            out = computectl("ps", "--json", env=env)
            state.update(json.loads(out.stdout) if out.stdout else {})
            return state.get("services", {}).get("crasher", {}).get("state", "").startswith("failed")

        assert wait_until(failed, 60, interval=0.2), state
        crasher, sleeper = state["services"]["crasher"], state["services"]["sleeper"]
        assert crasher["state"] == "failed (last exit 3)" and crasher["restarts"] == 2
        assert crasher["pid"] is None and sleeper["state"] == "running" and state["up"] is False
        text = computectl("ps", env=env)
        assert text.returncode == 1 and "failed (last exit 3)" in text.stdout
        assert (tmp_path / "logs" / "crasher.log").read_text().count("exited with code 3") == 3
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(60)
    assert code == 0
    final = json.loads((tmp_path / "services.json").read_text())
    assert final["supervisor"]["state"] == "stopped"
    assert final["services"]["sleeper"]["state"] == "stopped"
    assert gone(sleeper["pid"], sleeper["start_ticks"])


def test_a_killed_supervisor_takes_its_services_with_it(tmp_path: Path) -> None:
    supervisor = _supervise(tmp_path, [
        {"name": "sleeper", "argv": [sys.executable, "-c", "import time; time.sleep(600)"]},
    ], {})
    try:
        state: dict[str, Any] = {}

        def running() -> bool:
            state.update(read_state(tmp_path / "services.json") or {})
            return state.get("services", {}).get("sleeper", {}).get("state") == "running"

        assert wait_until(running, 30, interval=0.1), state
        sleeper = state["services"]["sleeper"]
    finally:
        supervisor.kill()
        supervisor.wait()
    assert wait_until(lambda: gone(sleeper["pid"], sleeper["start_ticks"]), 30), sleeper
