"""Workflows through the API end to end, on the real stack: uvicorn with its projector, the
processors (``python -m processors.cli``, the workflow engine) and a real worker runtime with
tiny recording handlers (tests/processors/test_workflows_app.py's). The fashion pipeline
completes with each step's input taken from its parent's result; pause, resume and cancel go
through the API; ``computectl workflow run --wait`` follows a workflow to its end (exit 0) or
to its failure (exit 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from tests.api.conftest import ApiStack, Tenant
from tests.gpu_consumers.runtime_helpers import Running, worker_settings
from tests.processors.test_lifecycle_app import App
from tests.processors.test_workflows_app import FASHION, HOLD_S, TWO, TYPES, Script, handler_class
from tests.projection.db.helpers import wait_for
from workflows.record import step_task_id

pytestmark = pytest.mark.integration

PATH = "/api/v1/workflows"


@pytest.fixture(scope="module")
def engine(api: ApiStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Script]:
    """The processors and a worker serving the pipeline's types on the API's topics; the
    handlers' script (what they were given, which task to fail or hold)."""
    tmp = tmp_path_factory.mktemp("engine")
    script = Script()
    worker = Worker(api.kafka, worker_settings(api.kafka, types=TYPES, task_timeout_s=HOLD_S + 30),
                    {t: {"test": handler_class(t, script)} for t in TYPES}, FileStore(tmp / "results"),
                    None, None)
    running = Running(worker)
    app = App(api.kafka, tmp, lease_s=1e9)
    app.start()
    try:
        yield script
    finally:
        assert app.stop() == 0, app.tail()
        worker.stop()
        running.join()


def _body(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "origin_instance": "tests", "suppress_subtask_events": True, "steps": steps}


def _get(client: httpx.Client, tenant: Tenant, wid: str) -> dict[str, Any] | None:
    resp = client.get(f"{PATH}/{wid}", headers=tenant.headers)
    return resp.json() if resp.status_code == 200 else None


def _when(client: httpx.Client, tenant: Tenant, wid: str, check: Any, what: str) -> dict[str, Any]:
    return wait_for(lambda: (lambda w: w if w is not None and check(w) else None)(_get(client, tenant, wid)),
                    timeout_s=120, what=what)


def test_the_fashion_pipeline_completes_with_each_input_from_its_parent(
        api: ApiStack, client: httpx.Client, tenant: Tenant, engine: Script) -> None:
    resp = client.post(PATH, json=_body("fashion", FASHION), params={"start": "true"}, headers=tenant.headers)
    assert resp.status_code == 202, resp.text
    wid = resp.json()["workflow_id"]
    done = _when(client, tenant, wid, lambda w: w["status"] in ("COMPLETED", "FAILED"), "the workflow ended")
    assert done["status"] == "COMPLETED", done
    steps = {s["id"]: s for s in done["steps"]}
    assert [s["status"] for s in done["steps"]] == ["COMPLETED"] * 4
    assert all(s["task_id"] == step_task_id(wid, s["id"]) and s["attempt"] == 1 for s in done["steps"])
    for step in FASHION:
        for m in step.get("input_mappings", []):
            parent_url = steps[m["from_step"]]["result"][m["from_field"]]
            assert steps[step["id"]]["params"][m["to_field"]] == parent_url
            [given] = engine.ran(steps[step["id"]]["task_id"])  # what the handler was given
            assert given[m["to_field"]] == parent_url
    assert done["steps_completed"] == 4 and done["completed_at"] is not None
    # the steps are ordinary tasks of the tenant, readable as such
    task = client.get(f"/api/v1/tasks/{steps['adjust']['task_id']}", headers=tenant.headers).json()
    assert task["status"] == "COMPLETED" and task["result"] == steps["adjust"]["result"]


def test_pause_resume_and_cancel_through_the_api(
        api: ApiStack, client: httpx.Client, tenant: Tenant, engine: Script) -> None:
    created = client.post(PATH, json=_body("paused", TWO), headers=tenant.headers).json()
    wid = created["workflow_id"]
    release = engine.hold(step_task_id(wid, "generate"))
    _when(client, tenant, wid, lambda w: w["status"] == "CREATED", "CREATED")
    assert client.post(f"{PATH}/{wid}/start", headers=tenant.headers).status_code == 202
    wait_for(lambda: engine.started[step_task_id(wid, "generate")].is_set(), timeout_s=60,
             what="its first step running")
    _when(client, tenant, wid, lambda w: w["status"] == "RUNNING", "RUNNING")
    assert client.post(f"{PATH}/{wid}/pause", headers=tenant.headers).status_code == 202
    _when(client, tenant, wid, lambda w: w["status"] == "PAUSED", "PAUSED")
    release.set()
    at_rest = _when(client, tenant, wid, lambda w: w["steps"][0]["status"] == "COMPLETED",
                    "the running step finished while paused")
    assert at_rest["status"] == "PAUSED" and at_rest["steps"][1]["status"] == "PENDING"
    assert engine.ran(step_task_id(wid, "refine")) == []  # nothing new started
    assert client.post(f"{PATH}/{wid}/resume", headers=tenant.headers).status_code == 202
    assert _when(client, tenant, wid, lambda w: w["status"] in ("COMPLETED", "FAILED"),
                 "the resumed workflow ended")["status"] == "COMPLETED"

    held = client.post(PATH, json=_body("cancelled", TWO), params={"start": "true"},
                       headers=tenant.headers).json()["workflow_id"]
    engine.hold(step_task_id(held, "generate"))
    wait_for(lambda: step_task_id(held, "generate") in engine.started
             and engine.started[step_task_id(held, "generate")].is_set(), timeout_s=60, what="the step running")
    _when(client, tenant, held, lambda w: w["status"] == "RUNNING", "RUNNING recorded")  # else a 404
    assert client.post(f"{PATH}/{held}/cancel", headers=tenant.headers).status_code == 202
    ended = _when(client, tenant, held, lambda w: w["status"] == "CANCELLED", "CANCELLED")
    assert ended["steps"][1]["status"] != "COMPLETED" and engine.ran(step_task_id(held, "refine")) == []


def test_computectl_workflow_run_waits_for_the_end(
        api: ApiStack, tenant: Tenant, engine: Script, tmp_path: Path) -> None:
    env = {"COMPUTE_API_URL": api.base_url, "COMPUTE_API_KEY": tenant.key}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "cli", "origin_instance": "tests", "steps": TWO}))
    result = CliRunner().invoke(cli, ["workflow", "run", str(pipeline), "--wait", "--json",
                                      "--timeout", "120"], env=env)
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "COMPLETED" and [s["status"] for s in final["steps"]] == ["COMPLETED"] * 2

    shown = CliRunner().invoke(cli, ["workflow", "status", final["workflow_id"]], env=env)
    assert shown.exit_code == 0 and "COMPLETED" in shown.output and "generate" in shown.output
    listed = CliRunner().invoke(cli, ["workflow", "list", "--json"], env=env)
    assert final["workflow_id"] in {w["workflow_id"] for w in json.loads(listed.stdout)["items"]}

    # a step that fails fails the workflow: exit 1, the failed step named
    failing = tmp_path / "failing.yaml"
    failing.write_text(yaml.safe_dump({"name": "cli-failing", "origin_instance": "tests", "steps": TWO}))
    original = engine.fail
    engine.fail = _FailBySuffix(original)
    try:
        result = CliRunner().invoke(cli, ["workflow", "run", str(failing), "--wait", "--timeout", "120"],
                                    env=env)
    finally:
        engine.fail = original
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "INVALID_INPUT" in result.output


class _FailBySuffix(set):
    """Every task id is "in" it: the next step run fails (the script's ``fail`` check)."""

    def __init__(self, base: set[str]) -> None:
        super().__init__(base)

    def __contains__(self, task_id: object) -> bool:
        return True
