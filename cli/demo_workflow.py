"""The demo's workflow: examples/fashion_pipeline.yaml (GENERATION → REFINE → BACKGROUND_REMOVE →
IMAGE_ADJUSTER) through ``POST /api/v1/workflows?start=true``, followed to its end, each step's
result shown. Each step after the first takes its input image from its parent's result, so the
table shows the chain: a step's input is the URL the row above it produced."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.table import Table

from cli.workflow import ENDED, load_pipeline

PIPELINE = Path(__file__).resolve().parents[1] / "examples" / "fashion_pipeline.yaml"
# Four small tasks on a worker that is warm by now: seconds; the bound only matters when broken.
_DEADLINE_S = 120.0
# Each GET is a long poll (?wait=): it answers when the workflow ends, or after this long so
# that a child process that died is noticed.
_WAIT_S = 2.0


def run_workflow(api: httpx.Client, console: Console, died: Callable[[], str | None]) -> dict:
    """POST the pipeline, wait until it ended (``died`` names a child process that exited), show
    every step, and return the final document from ``GET /api/v1/workflows/{id}``."""
    console.rule("a workflow: four steps, POST /api/v1/workflows?start=true")
    body = load_pipeline(PIPELINE)
    accepted = api.post("/api/v1/workflows", json=body, params={"start": "true"})
    if accepted.status_code != 202:
        raise click.ClickException(f"POST /api/v1/workflows: {accepted.status_code} {accepted.text}")
    workflow_id = accepted.json()["workflow_id"]
    console.print(f"workflow {workflow_id} ({body['name']}): "
                  + " → ".join(f"{s['id']} ({s['task_type']})" for s in body["steps"]), markup=False)
    deadline, workflow = time.monotonic() + _DEADLINE_S, None
    with console.status("the processors run the steps, each on its parent's result..."):
        while workflow is None or workflow["status"] not in ENDED:
            if (why := died()) is not None:
                raise click.ClickException(why)
            if time.monotonic() > deadline:
                raise click.ClickException(f"workflow {workflow_id} not ended within {_DEADLINE_S:.0f}s"
                                           f" (last status: {workflow and workflow['status']})")
            answer = api.get(f"/api/v1/workflows/{workflow_id}", params={"wait": _WAIT_S})
            workflow = answer.json() if answer.status_code == 200 else None  # 404: not yet recorded
    _show(workflow, console)
    return workflow


def _show(workflow: dict, console: Console) -> None:
    table = Table(title=f"workflow {workflow['workflow_id']}: {workflow['status']}")
    for column in ("step", "task type", "status", "task id", "input (mapped from the parent)", "result"):
        table.add_column(column, overflow="fold")
    for step in workflow["steps"]:
        params = step["params"] or {}
        mapped = [params.get(m["to_field"]) for m in step["input_mappings"]]
        result = step["result"] or {}
        outcome = result.get("result_image_url") or (step["error"] or {}).get("message") or ""
        table.add_row(step["id"], step["task_type"], step["status"], step["task_id"] or "",
                      "\n".join(u for u in mapped if u), outcome)
    console.print(table)
