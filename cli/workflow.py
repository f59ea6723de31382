"""``computectl workflow``: run a pipeline (a workflow of steps) from a YAML file and follow it.

Every command goes through the REST API (``COMPUTE_API_URL``, ``COMPUTE_API_KEY``): the
workflow is the key's tenant's. The YAML file is the body of ``POST /api/v1/workflows``
(docs/WORKFLOWS.md; examples/fashion_pipeline.yaml)::

    name: fashion
    steps:
      - id: generate
        task_type: GENERATION
        config: {prompt: "a red dress", width: 64, height: 64}
      - id: refine
        task_type: REFINE
        depends_on: [generate]
        input_mappings: [{from_step: generate, from_field: result_image_url, to_field: base_image_url}]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.api_client import api_client, api_options, check
from schemas.errors import ComputeError

ENDED = ("COMPLETED", "FAILED", "CANCELLED")
_STEP_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "SKIPPED")
# How often --wait reads the workflow (and its running steps' tasks, for their progress).
_POLL_S = 0.5


class WorkflowFileError(ComputeError):
    """The pipeline file cannot be read, is not YAML, or is not a mapping of a workflow's fields."""


def load_pipeline(path: Path) -> dict[str, Any]:
    """The workflow body a YAML (or JSON) file holds; WorkflowFileError naming what is wrong."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkflowFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowFileError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(body, dict):
        raise WorkflowFileError(f"{path}: a workflow is a mapping (name, steps, ...), "
                                f"not a {type(body).__name__}")
    if not isinstance(body.get("steps"), list) or not body["steps"]:
        raise WorkflowFileError(f"{path}: 'steps' must be a non-empty list of steps")
    return body


@click.group("workflow")
def workflow() -> None:
    """Workflows: DAGs of tasks run as one unit (docs/WORKFLOWS.md), through the API."""


@workflow.command("run")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow it until it ends, with a progress bar per step.")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True,
              help="With --wait: give up after this many seconds (exit 2).")
@click.option("--no-start", is_flag=True, help="Create it only (CREATED); `workflow start` starts it.")
@click.option("--name", help="Override the file's name.")
@click.option("--webhook-url", help="POST the workflow's status changes to this URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the workflow as JSON (no bars).")
@api_options
def run(pipeline: Path, wait: bool, timeout_s: float, no_start: bool, name: str | None,
        webhook_url: str | None, as_json: bool, api_url: str, api_key: str) -> None:
    """Create and start the workflow in PIPELINE (YAML: the body of POST /api/v1/workflows;
    origin_instance defaults to "computectl").

    Exit codes: 0 accepted (with --wait: it ended COMPLETED); 1 it ended FAILED or CANCELLED, or
    the API refused it (a 422 names the step and the field); 2 not ended within --timeout, or a
    file that is not a workflow.

    Example: computectl workflow run examples/fashion_pipeline.yaml --wait
    """
    body = load_pipeline(pipeline)
    body.setdefault("origin_instance", "computectl")  # required by the API; a file may leave it out
    if name:
        body["name"] = name
    if webhook_url:
        body["webhook_url"] = webhook_url
    with api_client(api_url, api_key) as client:
        accepted = check(client.post("/api/v1/workflows", json=body,
                                     params={"start": "false" if no_start else "true"}))
        wid = accepted["workflow_id"]
        if not wait:
            click.echo(json.dumps(accepted) if as_json else f"workflow {wid} ({accepted['status']})")
            return
        final = follow(client, wid, timeout_s, quiet=as_json)
    _print(final, as_json)
    if final["status"] != "COMPLETED":
        sys.exit(1)


def follow(client: Any, workflow_id: str, timeout_s: float, *, quiet: bool = False) -> dict[str, Any]:
    """Read the workflow until it ends, one progress bar per step (a running step's bar is its
    task's progress); the ended workflow. Exit 2 past ``timeout_s``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout_s
    workflow: dict[str, Any] | None = None
    bars: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), disable=quiet, console=Console(stderr=True)) as progress:
        while True:
            resp = client.get(f"/api/v1/workflows/{workflow_id}")
            if resp.status_code != 404:  # 404: the processors' first record is not projected yet
                workflow = check(resp)
                for step in workflow["steps"]:
                    if step["id"] not in bars:
                        bars[step["id"]] = progress.add_task(step["id"], total=1.0)
                    progress.update(bars[step["id"]], completed=_step_progress(client, step),
                                    description=f"{step['id']:<16} {step['task_type']:<18} {step['status']}")
                if workflow["status"] in ENDED:
                    return workflow
            if time.monotonic() > deadline:
                click.echo(f"workflow {workflow_id} not ended within {timeout_s:.0f}s (last status: "
                           f"{workflow['status'] if workflow else 'not projected yet'})", err=True)
                sys.exit(2)
            time.sleep(_POLL_S)


def _step_progress(client: Any, step: dict[str, Any]) -> float:
    if step["status"] in _STEP_ENDED:
        return 1.0
    if step["status"] != "RUNNING" or not step["task_id"]:
        return 0.0
    resp = client.get(f"/api/v1/tasks/{step['task_id']}")
    progress = resp.json().get("progress") if resp.status_code == 200 else None
    return float(progress or 0.0)


def _outcome(step: dict[str, Any]) -> str:
    result, error = step.get("result") or {}, step.get("error")
    if result.get("result_image_url") or result.get("result_video_url"):
        return result.get("result_image_url") or result.get("result_video_url")
    if result.get("result_text") is not None:
        return "text: " + repr(result["result_text"][:60])
    if error:
        return f"{error.get('code')}: {(error.get('message') or '')[:160]}"
    return ""


def _print(workflow: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(workflow))
        return
    click.echo(f"workflow {workflow['workflow_id']}  {workflow['name']}  {workflow['status']}"
               + (f"  ({workflow['message']})" if workflow.get("message") else ""))
    for step in workflow["steps"]:
        click.echo(f"  {step['id']:<16} {step['task_type']:<18} {step['status']:<10} "
                   f"{step['task_id'] or '-':<36}  {_outcome(step)}")


@workflow.command("status")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print the workflow as JSON.")
@api_options
def status(workflow_id: str, as_json: bool, api_url: str, api_key: str) -> None:
    """Show a workflow: its status and every step's status, task id and result."""
    with api_client(api_url, api_key) as client:
        _print(check(client.get(f"/api/v1/workflows/{workflow_id}")), as_json)


@workflow.command("list")
@click.option("--status", "status_", help="Only workflows with this status.")
@click.option("--page-size", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@api_options
def list_(status_: str | None, page_size: int, as_json: bool, api_url: str, api_key: str) -> None:
    """List the key's tenant's workflows, newest first."""
    params: dict[str, Any] = {"page_size": page_size, **({"status": status_} if status_ else {})}
    with api_client(api_url, api_key) as client:
        page = check(client.get("/api/v1/workflows", params=params))
    if as_json:
        click.echo(json.dumps(page))
        return
    for w in page["items"]:
        click.echo(f"{w['workflow_id']}  {w['status']:<10} {w['steps_completed']}/{w['steps_total']} "
                   f"steps  {w['created_at']}  {w['name']}")
    click.echo(f"{len(page['items'])} of {page['total']}")


def _command(action: str, help_text: str) -> None:
    @workflow.command(action, help=help_text)
    @click.argument("workflow_id")
    @api_options
    def command(workflow_id: str, api_url: str, api_key: str) -> None:
        with api_client(api_url, api_key) as client:
            answer = check(client.post(f"/api/v1/workflows/{workflow_id}/{action}"))
        if action == "cleanup":
            click.echo(f"deleted {len(answer['deleted'])} output(s), left {len(answer['not_deleted'])}")
        else:
            click.echo(f"{action} of workflow {workflow_id} requested (it was {answer['status']})")


_command("start", "Start a CREATED workflow.")
_command("pause", "Pause a RUNNING workflow: running steps finish, nothing new starts.")
_command("resume", "Resume a PAUSED workflow.")
_command("cancel", "Cancel a workflow: nothing new starts, running steps are cancelled.")
_command("cleanup", "Delete the stored outputs of an ended workflow's steps.")
