"""``computectl`` commands of the read model and the API.

``apikey create|list|revoke``, ``db migrate|rebuild``, ``projector``, ``api``, and the HTTP
clients ``status <task-id> [--follow]`` and ``tasks``. The root CLI adds them with
:func:`add_state_commands`; everything heavy is imported inside the commands.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from cli.api_client import api_client, api_options, check


def _database_url(url: str | None) -> str:
    if url:
        return url
    from api.settings import load_settings

    return load_settings().database_url


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


_db_option = click.option("--database-url", envvar="DATABASE_URL", metavar="URL",
                          help="PostgreSQL of the read model (default: $DATABASE_URL).")


# ------------------------------------------------------------------------------ apikey

@click.group("apikey")
def apikey() -> None:
    """Manage API keys (stored hashed; each belongs to one tenant)."""


@apikey.command("create")
@click.option("--tenant", required=True, help="The tenant whose tasks the key may see.")
@click.option("--name", help="A label, e.g. who uses the key.")
@click.option("--operator", is_flag=True, help=(
    "An operator key: may also read /metrics and the fleet-wide monitoring routes (every "
    "tenant's figures, worker hosts). For Prometheus and the people running the fleet."))
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@click.option("--export", "as_export", is_flag=True,
              help="Print `export COMPUTE_API_KEY=...` (and COMPUTE_API_URL when an API on this "
                   "database is known: $COMPUTE_API_URL, or `computectl up`'s): "
                   "eval \"$(computectl apikey create ... --export)\".")
@_db_option
def apikey_create(tenant: str, name: str | None, operator: bool, as_json: bool, as_export: bool,
                  database_url: str | None) -> None:
    """Create a key for TENANT and print it; it is shown only this once."""
    from projection.db.apikeys import create_key

    database_url = _database_url(database_url)
    key, record = create_key(database_url, tenant, name, operator=operator)
    kind = "operator" if operator else "tenant"
    if as_json:
        click.echo(json.dumps({"key": key, "key_id": record.key_id, "tenant": tenant,
                               "operator": operator}))
        return
    exports = "\n".join(f"export {k}={v}" for k, v in _key_exports(key, database_url).items())
    if as_export:
        click.echo(exports)
    else:
        click.echo(key)
        click.echo(f"{kind} key id {record.key_id}, tenant {tenant}: store the key now, it is "
                   f"not kept. For `computectl status`, `tasks`, `submit`:\n{exports}", err=True)


def _key_exports(key: str, database_url: str) -> dict[str, str]:
    """COMPUTE_API_URL (when an API on this database is known) and COMPUTE_API_KEY."""
    from devstack.cli import default_state_dir
    from devstack.system import api_url_for

    state_dir = os.environ.get("COMPUTE_DEVSTACK_STATE_DIR") or default_state_dir()
    url = api_url_for(database_url, Path(state_dir))
    return {**({"COMPUTE_API_URL": url} if url else {}), "COMPUTE_API_KEY": key}


@apikey.command("list")
@click.option("--tenant", help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True)
@_db_option
def apikey_list(tenant: str | None, as_json: bool, database_url: str | None) -> None:
    """List keys (ids, tenants, state; never the secrets)."""
    from projection.db.apikeys import list_keys

    keys = list_keys(_database_url(database_url), tenant)
    if as_json:
        click.echo(json.dumps([{"key_id": k.key_id, "tenant": k.tenant_id, "name": k.name,
                                "created_at": k.created_at.isoformat(), "revoked": k.revoked,
                                "operator": k.operator} for k in keys]))
        return
    for k in keys:
        state = "revoked" if k.revoked else "active"
        kind = "operator" if k.operator else "tenant"
        click.echo(f"{k.key_id}  {k.tenant_id:<24} {state:<8} {kind:<8} "
                   f"{k.created_at:%Y-%m-%d %H:%M}  {k.name or ''}")


@apikey.command("revoke")
@click.argument("key_id")
@_db_option
def apikey_revoke(key_id: str, database_url: str | None) -> None:
    """Revoke the key KEY_ID (or the whole key); effective on the next request."""
    from projection.db.apikeys import revoke_key

    if not revoke_key(_database_url(database_url), key_id):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


# ------------------------------------------------------------------------------ db

@click.group("db")
def db() -> None:
    """The PostgreSQL read model."""


@db.command("migrate")
@_db_option
def db_migrate(database_url: str | None) -> None:
    """Apply the missing migrations (idempotent; safe to run from several processes)."""
    from projection.db.migrate import migrate

    applied = migrate(_database_url(database_url))
    click.echo(f"applied {', '.join(f'{v:04d}' for v in applied)}" if applied else "up to date")


@db.command("rebuild")
@_db_option
def db_rebuild(database_url: str | None) -> None:
    """Replay the status, task, generations-state and workflows-state topics from the beginning
    into an EMPTY database (tasks, task_events, generations and their predictions, shots,
    attempts, refines; workflows and their steps)."""
    from projection.rebuild import rebuild
    from schemas.kafka_settings import KafkaSettings

    report = rebuild(_database_url(database_url), KafkaSettings())
    click.echo(f"replayed {report.records} records: {report.tasks} tasks, {report.events} events,"
               f" {report.generations} generations, {report.workflows} workflows"
               f" ({report.skipped} unreadable records skipped)")


# ------------------------------------------------------------------------------ processes

@click.command("projector")
@_db_option
def projector(database_url: str | None) -> None:
    """Project the status, task and generations-state topics into PostgreSQL until
    SIGINT/SIGTERM; deliver webhooks when COMPUTE_WEBHOOK_SECRET is set."""
    from projection.projector import run_projector
    from projection.webhooks import webhook_settings_from_env
    from schemas.kafka_settings import KafkaSettings

    stats = run_projector(_database_url(database_url), KafkaSettings(), _stop_on_signals(),
                          webhooks=webhook_settings_from_env())
    click.echo(f"stopped after {stats.records} records ({stats.dead_lettered} dead-lettered)")


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int,
              help="A fixed port for a hand-run API; `computectl up` picks a free one.")
@click.option("--embedded-projector/--no-embedded-projector", default=False,
              help="Also run the projector in this process.")
def api(host: str, port: int, embedded_projector: bool) -> None:
    """Serve the REST API (OpenAPI at /api/v1/openapi.json)."""
    import uvicorn

    from api import create_app, load_settings

    app = create_app(load_settings(embedded_projector=embedded_projector))
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)


# ------------------------------------------------------------------------------ HTTP clients

# The read model follows the topics: a task the API has just accepted (202) is visible a moment
# later, once the projector has written it. Following a task waits this long for it to appear.
APPEAR_TIMEOUT_S, APPEAR_POLL_S = 30.0, 0.2


def _appeared(client: Any, task_id: str) -> Any:
    """GET the task, retrying a 404 until it appears or APPEAR_TIMEOUT_S pass (then the 404)."""
    deadline = time.monotonic() + APPEAR_TIMEOUT_S
    while True:
        resp = client.get(f"/api/v1/tasks/{task_id}")
        if resp.status_code != 404 or time.monotonic() > deadline:
            return resp
        time.sleep(APPEAR_POLL_S)


@click.command("status")
@click.argument("task_id")
@click.option("--follow", is_flag=True, help="Follow the task live until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
@api_options
def status(task_id: str, follow: bool, as_json: bool, api_url: str, api_key: str) -> None:
    """Show a task of the key's tenant; with --follow, a live progress bar until it ends.

    Exit codes: 0 shown (with --follow: it ended COMPLETED); 1 with --follow when it ended
    otherwise (FAILED, CANCELLED), and when the API refused (e.g. 404: no such task for the key's
    tenant - a task submitted without that key's tenant is not its). A task just submitted is
    visible once the read model has it: --follow waits up to 30 s for it to appear.
    """
    with api_client(api_url, api_key) as client:
        task = check(_appeared(client, task_id) if follow else client.get(f"/api/v1/tasks/{task_id}"))
        if follow:
            from cli.follow import follow_events

            final = follow_events(client, task_id, quiet=as_json)
            task = check(client.get(f"/api/v1/tasks/{task_id}"))
            task["status"] = final or task["status"]
    if as_json:
        click.echo(json.dumps(task))
    else:
        error = task.get("error") or {}
        click.echo(f"{task['task_id']}  {task['task_type']}  {task['status']}  "
                   f"attempt {task['attempt']}  {task['progress']:.0%}"
                   + (f"  {error.get('code')}: {error.get('message')}" if error else ""))
        if task.get("result"):
            click.echo(json.dumps(task["result"], indent=2))
    if follow and task["status"] != "COMPLETED":
        sys.exit(1)


@click.command("tasks")
@click.option("--status", "status_", help="PENDING, QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED")
@click.option("--task-type")
@click.option("--provider-type")
@click.option("--origin-instance")
@click.option("--origin-zone")
@click.option("--origin-tenant-id")
@click.option("--created-after", help="ISO 8601 with a time zone, e.g. 2025-01-01T00:00:00Z")
@click.option("--created-before")
@click.option("--search", help="Task id prefix.")
@click.option("--page", type=int, default=1, show_default=True)
@click.option("--page-size", type=int, default=50, show_default=True)
@click.option("--sort-by", default="created_at", show_default=True)
@click.option("--sort-order", type=click.Choice(["asc", "desc"]), default="desc", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@api_options
def tasks(status_: str | None, as_json: bool, api_url: str, api_key: str, **filters: Any) -> None:
    """List the key's tenant's tasks with the API's filters."""
    params = {k: v for k, v in {**filters, "status": status_}.items() if v is not None}
    if "task_type" in params:
        params["task_type"] = params["task_type"].upper().replace("-", "_")
    with api_client(api_url, api_key) as client:
        page = check(client.get("/api/v1/tasks", params=params))
    if as_json:
        click.echo(json.dumps(page))
        return
    for t in page["items"]:
        click.echo(f"{t['task_id']}  {t['task_type']:<18} {t['status']:<10} {t['progress']:>4.0%}"
                   f"  {t['created_at']}")
    shown = len(page["items"])
    click.echo(f"{shown} of {page['total']} (page {page['page']})", err=True)


COMMANDS = (apikey, db, projector, api, status, tasks)


def add_state_commands(cli: click.Group) -> None:
    """Register every command of this module on the root ``computectl`` group."""
    for command in COMMANDS:
        cli.add_command(command)


if __name__ == "__main__":  # python -m cli.server ...
    group = click.Group("state", help="Read model and API commands.")
    add_state_commands(group)
    group(prog_name=os.path.basename(sys.argv[0]))
