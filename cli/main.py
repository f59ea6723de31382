"""``computectl``: the command line of the Compute Server.

This module is the composition root of the CLI: each command group lives with the package it
drives and is imported lazily, so ``computectl submit`` does not pay for torch.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from schemas.errors import ComputeError


def _settings():  # read once per command, passed down
    from schemas.kafka_settings import KafkaSettings

    return KafkaSettings()


def _codec(settings):
    from schemas.codec import EventCodec
    from schemas.schema_store import SchemaStoreReader

    registry = None
    if settings.schema_registry_url:
        from schemas.schema_registry import HttpSchemaRegistry

        registry = HttpSchemaRegistry(settings.schema_registry_url)
    return EventCodec(registry=registry, lookup_fingerprint=SchemaStoreReader(settings))


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--param")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)  # numbers, booleans, lists and objects as JSON
    except json.JSONDecodeError:
        value = raw  # anything else is a string
    return key.strip(), value


# Commands that live with the package they drive, imported only when used, so that
# `computectl submit` does not pay for torch.
_LAZY_COMMANDS = {
    "dev": "devstack.cli:dev",
    "up": "devstack.system_cli:up",
    "ps": "devstack.system_cli:ps",
    "logs": "devstack.system_cli:logs",
    "down": "devstack.cli:down",
    "demo": "cli.demo:demo",
    "worker": "gpu_consumers.cli:worker",
    "processors": "processors.cli:processors",
    "catalog": "cli.catalog:catalog",
    "generate": "cli.generate:generate",
    "workflow": "cli.workflow:workflow",
    "apikey": "cli.server:apikey",
    "db": "cli.server:db",
    "projector": "cli.server:projector",
    "api": "cli.server:api",
    "status": "cli.server:status",
    "tasks": "cli.server:tasks",
}


class _ComputeGroup(click.Group):
    """Loads the lazy commands on demand, and turns our typed errors into one clear line and
    exit code 2 instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY_COMMANDS and name not in self.commands:
            module, attr = _LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        # What is loaded by now (modules, classes, functions: ~90k objects for a service) lives
        # as long as the process. Frozen, it is left out of the collector's full passes, which
        # took 10-30 ms each here: a latency spike wherever one landed (docs/PERFORMANCE.md).
        gc.freeze()
        try:
            return super().invoke(ctx)
        except ComputeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_ComputeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Compute Server on Kafka: submit AI tasks, run workers and processors, inspect topics.

    Endpoints come from the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
    S3_ENDPOINT_URL...); `computectl dev up` starts a local stack and prints them.
    """


@cli.group()
def topics() -> None:
    """Manage the Kafka topics."""


@topics.command("create")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def topics_create(as_json: bool) -> None:
    """Create every topic with the configured partitions (idempotent)."""
    from schemas.topic_admin import ensure_topics

    report = ensure_topics(_settings())
    if as_json:
        click.echo(json.dumps({"created": report.created, "existing": report.existing}))
    else:
        click.echo(f"created {len(report.created)} topic(s), {len(report.existing)} already there")


@cli.command()
@click.argument("task_type")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="A task parameter; VALUE is parsed as JSON when it can be. Repeatable.")
@click.option("--json", "json_file", type=click.File("r"), metavar="FILE",
              help="Read the parameters from a JSON object in FILE ('-' for stdin).")
@click.option("--idempotency-key", help="Same key, same task id: a repeat is never a second task.")
@click.option("--tenant", help="origin_tenant_id of the task (straight to Kafka only: with an API "
                               "key, the key's tenant).")
@click.option("--webhook-url", help="POST status changes of this task to this URL.")
@click.option("--entity-id", help="Your business entity the task is about (carried on every status "
                                  "event and webhook).")
@click.option("--origin-version", help="The version of the submitting system (origin_version).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def submit(task_type: str, params: tuple[str, ...], json_file: Any, idempotency_key: str | None,
           tenant: str | None, webhook_url: str | None, entity_id: str | None,
           origin_version: str | None, output: str) -> None:
    """Submit a task of TASK_TYPE (generation, editing, refine, video_generation, ...) and print
    its id once the broker has acknowledged it.

    With COMPUTE_API_KEY set (COMPUTE_API_URL: where the API is), the task goes through the API's
    POST /api/v1/tasks: the same checks, and the task is the key's tenant's, so `computectl
    status` and `computectl tasks` with that key see it. Without it, straight to Kafka
    (KAFKA_BOOTSTRAP_SERVERS), as --tenant says (no tenant: only operators' tools see it).

    Example: computectl submit generation -p prompt="a red dress" -p width=768 -p seed=42
    """
    from cli.api_client import api_from_env

    values: dict[str, Any] = json.load(json_file) if json_file else {}
    if not isinstance(values, dict):
        raise click.BadParameter("the JSON must be an object", param_hint="--json")
    values.update(_parse_param(p) for p in params)
    values.pop("task_type", None)  # the seed examples carry it; the argument is authoritative
    api = api_from_env()
    if api is not None:
        if tenant is not None:
            raise click.UsageError("--tenant: with COMPUTE_API_KEY set the key's tenant is the "
                                   "task's; unset COMPUTE_API_KEY to submit straight to Kafka")
        extra = {k: v for k, v in (("entity_id", entity_id), ("origin_version", origin_version)) if v}
        task_id, task_type = _submit_through_api(*api, task_type, {**values, **extra}, idempotency_key,
                                                 webhook_url)
    else:
        from producers.submit import Origin, TaskProducer

        settings = _settings()
        origin = Origin(tenant_id=tenant, version=origin_version)
        with TaskProducer(settings, codec=_codec(settings), origin=origin) as producer:
            task_id = producer.submit(task_type, values, idempotency_key=idempotency_key,
                                      webhook_url=webhook_url, entity_id=entity_id)
    if output == "json":
        click.echo(json.dumps({"task_id": task_id, "task_type": task_type.upper()}))
    else:
        click.echo(task_id)


def _submit_through_api(api_url: str, api_key: str, task_type: str, values: dict[str, Any],
                        idempotency_key: str | None, webhook_url: str | None) -> tuple[str, str]:
    """POST /api/v1/tasks; (task id, task type) of the accepted task."""
    from cli.api_client import api_client, check
    from schemas.enums import TaskType

    try:
        kind = TaskType.parse(task_type).value
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TASK_TYPE") from None
    body = {**values, "task_type": kind, **({"webhook_url": webhook_url} if webhook_url else {})}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with api_client(api_url, api_key) as client:
        accepted = check(client.post("/api/v1/tasks", json=body, headers=headers))
    return accepted["task_id"], kind


@cli.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the newest.")
@click.option("--max", "max_records", type=int, help="Stop after N records [default: never].")
@click.option("--idle-timeout", type=float,
              help="Stop after this many seconds without a record [default: never].")
def tail(topic: str, from_beginning: bool, max_records: int | None, idle_timeout: float | None) -> None:
    """Decode and print the records of TOPIC as JSON lines.

    TOPIC is a full name or an alias: status, control, state, evaluations, schemas, a task type
    (generation, video_generation, ...), any of them with a .dlq suffix.

    Without --max or --idle-timeout it follows the topic and never ends on its own: Ctrl-C
    stops it. Example: computectl tail status --from-beginning --idle-timeout 2
    """
    from cli.tail import resolve_topic
    from cli.tail import tail as tail_records

    settings = _settings()
    name = resolve_topic(settings, topic)
    for record in tail_records(settings, name, codec=_codec(settings), from_beginning=from_beginning,
                               max_records=max_records, idle_timeout_s=idle_timeout):
        click.echo(json.dumps(record, default=str))


@cli.group()
def schemas() -> None:
    """The Avro contracts, for producers in other languages."""


@schemas.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(out_dir: Path) -> None:
    """Write every event schema, self-contained, with its fingerprint, into OUT_DIR."""
    from schemas import avro_files
    from schemas.events import all_event_models

    out_dir.mkdir(parents=True, exist_ok=True)
    for model in all_event_models():
        schema = avro_files.schema_json(model.avro_name)
        fp = avro_files.fingerprint(avro_files.parsed_schema(model.avro_name))
        (out_dir / f"{model.avro_name}.avsc").write_text(json.dumps(schema, indent=2) + "\n")
        click.echo(f"{fp.hex()}  {model.avro_name}")


def main() -> None:
    cli()
