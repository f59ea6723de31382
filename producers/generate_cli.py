"""``computectl generate``: start a generation (seed "Generation Types") from the command line.

The request is planned here (``producers.generations.plan_generation``; catalog ids resolved in
PostgreSQL when ``--database-url`` / ``$DATABASE_URL`` is given) and produced as one
``GenerationRequested`` record on the generations topic; the processors' orchestrator submits
its tasks and keeps its record. ``--wait`` follows that record on the compacted
``generations.state`` topic until the generation is done.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import click
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from producers.catalog import InMemoryCatalog, PostgresCatalog
from producers.generations import GenerationRequested, plan_generation
from schemas.enums import GenerationStrategy
from schemas.errors import ComputeError
from schemas.kafka_settings import KafkaSettings

_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
_ACK_TIMEOUT_S = 30.0


class GenerationRequestError(ComputeError):
    """The generation request is invalid (the message names each field) or was not delivered."""


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--param")
    try:
        return key.strip(), json.loads(raw)  # numbers, booleans, lists and objects as JSON
    except json.JSONDecodeError:
        return key.strip(), raw


def produce_request(kafka: KafkaSettings, request: GenerationRequested) -> None:
    """Produce ``request`` and wait for the broker's acknowledgement."""
    producer = Producer({**kafka.client_config(), "enable.idempotence": True, "acks": "all"})
    errors: list[Any] = []
    key, value, headers = request.to_record()
    producer.produce(kafka.topics.generations, value, key, headers=headers,
                     on_delivery=lambda err, _msg: errors.append(err))
    if producer.flush(_ACK_TIMEOUT_S) or errors != [None]:
        raise GenerationRequestError(f"generation {request.plan.generation_id} was not acknowledged "
                                     f"by the broker: {errors or 'timed out'}")


def follow(kafka: KafkaSettings, generation_id: str, timeout_s: float) -> dict[str, Any]:
    """The generation's latest record once it is done (reads the compacted record topic)."""
    from rich.progress import Progress

    topic = kafka.topics.generations_state
    consumer = Consumer({**kafka.client_config(), "group.id": "computectl-generate",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline, record = time.monotonic() + timeout_s, None
        with Progress(transient=True) as bar:
            job = bar.add_task(f"generation {generation_id[:8]}", total=None)
            while record is None or record["status"] not in _TERMINAL:
                if time.monotonic() > deadline:
                    raise GenerationRequestError(
                        f"generation {generation_id} not done within {timeout_s:.0f}s "
                        f"(last status: {record['status'] if record else 'no record yet'})")
                msg = consumer.poll(0.2)
                if msg is None or msg.error() or msg.key() != generation_id.encode() or not msg.value():
                    continue
                record = json.loads(msg.value())
                done = sum(p["status"] in _TERMINAL for p in record["predictions"])
                bar.update(job, total=len(record["predictions"]), completed=done)
        return record
    finally:
        consumer.close()


@click.command("generate")
@click.argument("strategy", type=click.Choice([s.value for s in GenerationStrategy], case_sensitive=False))
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="A request field; VALUE is parsed as JSON when it can be. Repeatable.")
@click.option("--json", "json_file", type=click.File("r"), metavar="FILE",
              help="Read the request fields from a JSON object in FILE ('-' for stdin).")
@click.option("--agentic", is_flag=True, help="generation_type AGENTIC (evaluate and retry).")
@click.option("--tenant", help="origin_tenant_id of the generation and its tasks.")
@click.option("--webhook-url", help="POST the generation's status changes to this URL.")
@click.option("--database-url", envvar="DATABASE_URL", help="The catalog's database (subject, product, style ids).")
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Follow the generation until it is done, at most SECONDS.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def generate(strategy: str, params: tuple[str, ...], json_file: Any, agentic: bool, tenant: str | None,
             webhook_url: str | None, database_url: str | None, wait_s: float | None, output: str) -> None:
    """Start a generation of STRATEGY and print its id and planned task ids.

    Example: computectl generate GENERATE -p shot_type_string="full-body shot" \\
    -p subject_id=<uuid> -p batch_size=2 --agentic --wait 600
    """
    fields: dict[str, Any] = json.load(json_file) if json_file else {}
    if not isinstance(fields, dict):
        raise click.BadParameter("the JSON must be an object", param_hint="--json")
    fields.update(_param(p) for p in params)
    fields["strategy"] = strategy.upper()
    if agentic:
        fields["generation_type"] = "AGENTIC"
    catalog = PostgresCatalog(database_url) if database_url else InMemoryCatalog()
    try:
        plan = plan_generation(fields, catalog)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or '(request)'}: {e['msg']}"
                             for e in exc.errors())
        raise GenerationRequestError(f"invalid {strategy.upper()} generation: {problems}") from None
    kafka = KafkaSettings()
    produce_request(kafka, GenerationRequested(
        plan=plan, requested_at=datetime.now(timezone.utc).isoformat(),
        origin_tenant_id=tenant, webhook_url=webhook_url))
    waiting = plan.prompt_step.waiting if plan.prompt_step else plan.tasks
    summary: dict[str, Any] = {"generation_id": plan.generation_id,
                               "task_ids": [t.task_id for t in waiting],
                               "prompt_task_id": plan.prompt_step.task.task_id if plan.prompt_step else None}
    if wait_s is not None:
        record = follow(kafka, plan.generation_id, wait_s)
        summary |= {"status": record["status"], "predictions": record["predictions"]}
    if output == "json":
        click.echo(json.dumps(summary))
        return
    click.echo(f"generation {plan.generation_id}  ({len(summary['task_ids'])} prediction(s))")
    for pred in summary.get("predictions") or [{"index": i, "task_id": t, "status": "submitted"}
                                                for i, t in enumerate(summary["task_ids"])]:
        url = ((pred.get("result") or {}).get("result_image_url")) or pred.get("error_message") or ""
        click.echo(f"  #{pred['index']}  {pred.get('task_id')}  {pred['status']}  {url}")
    if "status" in summary:
        click.echo(f"status: {summary['status']}")
