"""README.md's "Quickstart by hand", run as written: the shell block after ``<!-- quickstart -->``
is taken FROM README.md (so the README cannot rot), each of its commands is run in order in one
bash with ``set -euo pipefail``, on a fresh stack (its own state folder), and each step's
outcome is checked: the task COMPLETED, the list shows it, the AGENTIC generation COMPLETED with
its prediction, and ``down`` left no process of the run behind."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from devstack.system import COMPUTECTL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- quickstart -->"
_STEP = "::quickstart-step::"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# The whole quickstart: the stack and the services' start, two tasks' worth of model work and
# three generation attempts; first-run model builds (a clean clone) are most of it.
_DEADLINE_S = 900


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the fenced block right after the marker: comments and blank lines
    dropped, a line ending in a backslash joined with the next, as bash reads them."""
    after = readme.split(MARKER, 1)[1]
    match = re.match(r"\s*```(?:sh|bash)\n(.*?)\n```", after, re.S)
    assert match, f"README.md: no ```sh block right after {MARKER}"
    commands, pending = [], ""
    for line in match.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line
        if line.endswith("\\"):
            pending += "\n"
            continue
        commands.append(pending)
        pending = ""
    assert not pending, "the block ends with a continued line"
    return commands


def _script(commands: list[str]) -> str:
    """The commands, unchanged, each after a marker line, so that the output splits by step."""
    lines = ["set -euo pipefail"]
    for i, command in enumerate(commands):
        lines += [f"echo '{_STEP}{i}'", command]
    return "\n".join(lines) + "\n"


def _processes_with(marker: str) -> list[str]:
    """``pid cmdline`` of every live process whose environment holds ``marker`` (whatever the
    run started inherits it: the supervisor, the services, Kafka, PostgreSQL, moto)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{proc.name} {cmdline}")
        except OSError:
            continue  # gone, or not ours to read
    return found


@pytest.mark.timeout(_DEADLINE_S + 180)
def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    commands = quickstart_commands((REPO / "README.md").read_text())
    run_marker = f"QUICKSTART_RUN={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "COMPUTE_", "DATABASE_URL", "S3_", "INPUT_", "RESULTS_"))}
    env |= {"COMPUTE_DEVSTACK_STATE_DIR": str(tmp_path / "state"),
            "QUICKSTART_RUN": run_marker.split("=", 1)[1], "NO_COLOR": "1"}
    try:
        done = subprocess.run(["bash", "-c", _script(commands)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=_DEADLINE_S)
    finally:
        left = _processes_with(run_marker)
        if left:  # a failed run: stop what it started before failing the test
            subprocess.run([*COMPUTECTL, "down"], env=env,
                           capture_output=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    steps = done.stdout.split(_STEP)[1:]
    outputs = {int(s.split("\n", 1)[0]): s.split("\n", 1)[1] if "\n" in s else "" for s in steps}
    assert sorted(outputs) == list(range(len(commands))), "not every command ran"

    def output_of(prefix: str) -> str:
        [i] = [i for i, c in enumerate(commands) if prefix in c]
        return outputs[i]

    status = output_of("computectl status")
    task = re.search(rf"({_UUID})\s+IMAGE_ADJUSTER\s+COMPLETED", status)
    assert task, status
    listed = output_of("computectl tasks")
    assert re.search(rf"{task.group(1)}\s+IMAGE_ADJUSTER\s+COMPLETED", listed), listed
    generation = output_of("computectl generate")
    assert re.search(r"^status: COMPLETED$", generation, re.M), generation
    predictions = re.findall(rf"#\d+\s+{_UUID}\s+(\w+)\s+(\S+)", generation)
    assert predictions and all(s == "COMPLETED" and url.startswith("file://")
                               for s, url in predictions), generation
    assert not left, f"processes of the run still alive after `computectl down`: {left}"
    assert commands[-1].startswith("computectl down")
