"""``computectl generate``: start a generation (seed "Generation Types") from the command line.

The request is planned here (``generations.plan.plan_generation``; catalog ids resolved in
PostgreSQL when ``--database-url`` / ``$DATABASE_URL`` is given) and produced as one
``GenerationRequested`` record on the generations topic; the processors' orchestrator submits
its tasks and keeps its record. ``--wait`` follows that record on the compacted
``generations.state`` topic until the generation is done.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import ValidationError

from generations.catalog import InMemoryCatalog
from generations.plan import GenerationRequested, plan_generation
from projection.db.catalog import PostgresCatalog
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
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True, "acks": "all"})
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
@click.option("--tenant", help="origin_tenant_id of the generation and its tasks (straight to "
                               "Kafka only: with an API key, the key's tenant).")
@click.option("--webhook-url", help="POST the generation's status changes to this URL.")
@click.option("--database-url", envvar="DATABASE_URL",
              help="The catalog's database (subject, product, style ids), straight to Kafka only.")
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Follow the generation until it is done, at most SECONDS.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def generate(strategy: str, params: tuple[str, ...], json_file: Any, agentic: bool, tenant: str | None,
             webhook_url: str | None, database_url: str | None, wait_s: float | None, output: str) -> None:
    """Start a generation of STRATEGY and print its id and planned task ids.

    With COMPUTE_API_KEY set (COMPUTE_API_URL: where the API is), through the API's POST
    /api/v1/generations: the generation is the key's tenant's and the API plans it. Without it,
    planned here and produced straight to Kafka, as --tenant says.

    Exit codes: 0 started (with --wait: it ended COMPLETED); 1 with --wait when it ended FAILED
    or CANCELLED, or the API refused the request; 2 for an invalid request, and with --wait when
    it was not done within SECONDS.

    Example: computectl generate GENERATE -p shot_type_string="full-body shot" \\
    -p subject_id=<uuid> -p batch_size=2 -p width=64 -p height=96 --agentic --wait 600
    """
    from cli.api_client import api_from_env

    fields: dict[str, Any] = json.load(json_file) if json_file else {}
    if not isinstance(fields, dict):
        raise click.BadParameter("the JSON must be an object", param_hint="--json")
    fields.update(_param(p) for p in params)
    if agentic:
        fields["generation_type"] = "AGENTIC"
    api = api_from_env()
    if api is not None:
        if tenant is not None:
            raise click.UsageError("--tenant: with COMPUTE_API_KEY set the key's tenant is the "
                                   "generation's; unset COMPUTE_API_KEY to produce straight to Kafka")
        summary = _through_api(*api, GenerationStrategy(strategy.upper()), fields, webhook_url, wait_s)
    else:
        summary = _straight_to_kafka(strategy.upper(), fields, tenant, webhook_url, database_url, wait_s)
    if output == "json":
        click.echo(json.dumps(summary))
    else:
        click.echo(f"generation {summary['generation_id']}  ({len(summary['task_ids'])} prediction(s))")
        for pred in summary.get("predictions") or [{"index": i, "task_id": t, "status": "submitted"}
                                                    for i, t in enumerate(summary["task_ids"])]:
            url = ((pred.get("result") or {}).get("result_image_url")) or pred.get("error_message") or ""
            click.echo(f"  #{pred['index']}  {pred.get('task_id')}  {pred['status']}  {url}")
        if "status" in summary:
            click.echo(f"status: {summary['status']}")
    if wait_s is not None and summary["status"] != "COMPLETED":
        sys.exit(1)


def _straight_to_kafka(strategy: str, fields: dict[str, Any], tenant: str | None,
                       webhook_url: str | None, database_url: str | None,
                       wait_s: float | None) -> dict[str, Any]:
    """Plan here, produce the request, follow the compacted record topic with --wait."""
    catalog = PostgresCatalog(database_url) if database_url else InMemoryCatalog()
    try:
        plan = plan_generation({**fields, "strategy": strategy}, catalog)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or '(request)'}: {e['msg']}"
                             for e in exc.errors())
        raise GenerationRequestError(f"invalid {strategy} generation: {problems}") from None
    kafka = KafkaSettings()
    produce_request(kafka, GenerationRequested(
        plan=plan, requested_at=datetime.now(UTC).isoformat(),
        origin_tenant_id=tenant, webhook_url=webhook_url))
    waiting = plan.prompt_step.waiting if plan.prompt_step else plan.tasks
    summary: dict[str, Any] = {"generation_id": plan.generation_id,
                               "task_ids": [t.task_id for t in waiting],
                               "prompt_task_id": plan.prompt_step.task.task_id if plan.prompt_step else None}
    if wait_s is not None:
        record = follow(kafka, plan.generation_id, wait_s)
        summary |= {"status": record["status"], "predictions": record["predictions"]}
    return summary


# Each GET of a followed generation is a long poll of at most this long (the API's default
# maximum is 60 s): the deadline of --wait is checked between them.
_API_WAIT_S = 20.0
# A generation the projector has not written yet is a 404 at once, not a long poll: ask again
# after this long (the projector writes within a batch of the orchestrator's first record).
_NOT_PROJECTED_POLL_S = 0.25


def _through_api(api_url: str, api_key: str, strategy: GenerationStrategy, fields: dict[str, Any],
                 webhook_url: str | None, wait_s: float | None) -> dict[str, Any]:
    """POST the request to the strategy's route; with --wait, long-poll the generation."""
    from api.models.generations import STRATEGY_ROUTES
    from cli.api_client import api_client, check

    fields.pop("strategy", None)  # the route names it
    body = {**fields, **({"webhook_url": webhook_url} if webhook_url else {})}
    with api_client(api_url, api_key) as client:
        accepted = check(client.post(f"/api/v1/generations{STRATEGY_ROUTES[strategy][0]}", json=body))
        summary: dict[str, Any] = {k: accepted[k] for k in ("generation_id", "task_ids", "prompt_task_id")}
        if wait_s is None:
            return summary
        deadline, generation = time.monotonic() + wait_s, None
        while generation is None or generation["status"] == "RUNNING":
            left = deadline - time.monotonic()
            if left <= 0:
                raise GenerationRequestError(
                    f"generation {summary['generation_id']} not done within {wait_s:.0f}s (last "
                    f"status: {generation['status'] if generation else 'not projected yet'})")
            answer = client.get(f"/api/v1/generations/{summary['generation_id']}",
                                params={"wait": round(min(left, _API_WAIT_S), 3)})
            if answer.status_code == 404:  # until the projector has its first record
                generation = None
                time.sleep(_NOT_PROJECTED_POLL_S)
            else:
                generation = check(answer)
    predictions = [{**p, "error_message": (p.get("error") or {}).get("message")}
                   for p in generation["predictions"]]
    return summary | {"status": generation["status"], "predictions": predictions}
