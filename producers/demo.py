"""``computectl demo``: the main flow on the embedded local stack, start to clean stop.

Today's flow (it grows with the system): start Kafka, PostgreSQL and the S3 endpoint; create the
topics; submit one task of each of the ten types; read every task back from its per-type topic
with an independent reader; show its PENDING → QUEUED status events; show that a repeated
idempotency key is the same task; show a refused bad task; stop everything.
"""

from __future__ import annotations

from collections import defaultdict

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from producers.examples import SEED_EXAMPLES
from producers.submit import TaskProducer
from producers.tail import tail
from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.errors import TaskValidationError
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics

# A record written a moment ago is readable within well under a second on a local broker; the
# reader stops once it has them all, this is only the bound.
_READ_IDLE_TIMEOUT_S = 10.0


@click.command()
def demo() -> None:
    """Start the local stack, run the main flow end to end, and stop everything cleanly."""
    from state.devstack.cli import sigterm_as_interrupt
    from state.devstack.stack import LocalStack

    console = Console()
    console.rule("Compute Server demo")
    with sigterm_as_interrupt():
        with console.status("starting Kafka (KRaft), PostgreSQL and the S3 endpoint..."):
            stack = LocalStack().start()
        _run_on(stack, console)


def _run_on(stack, console: Console) -> None:
    try:
        console.print(f"local stack up in {stack.start_seconds:.1f}s:")
        for key, value in stack.env().items():
            if not key.startswith("AWS_"):
                console.print(f"  {key}={value}")
        settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap_servers)
        run_flow(settings, console)
    finally:
        with console.status("stopping the local stack..."):
            pids = stack.pids()
            stack.stop()
        console.print(f"stopped {len(pids)} processes; nothing left running.")


def run_flow(settings: KafkaSettings, console: Console) -> None:
    report = ensure_topics(settings)
    console.print(f"topics: {len(report.created)} created, {len(report.existing)} already there")

    ids: dict[TaskType, str] = {}
    with TaskProducer(settings, source="demo") as producer, Progress(console=console) as progress:
        bar = progress.add_task("submitting one task of each type", total=len(TaskType))
        for task_type in TaskType:
            ids[task_type] = producer.submit(task_type, SEED_EXAMPLES[task_type])
            progress.advance(bar)
        progress.update(bar, description="waiting for the broker's acknowledgements")
    codec = EventCodec()
    _show_tasks(settings, codec, ids, console)
    _show_statuses(settings, codec, ids, console)

    console.rule("idempotency")
    with TaskProducer(settings, source="demo") as producer:
        params = SEED_EXAMPLES[TaskType.LLM_INTERACTION]
        first = producer.submit(TaskType.LLM_INTERACTION, params, idempotency_key="demo-order-1")
        again = producer.submit(TaskType.LLM_INTERACTION, params, idempotency_key="demo-order-1")
    console.print(f"same key twice -> {first} and {again}: "
                  f"{'the same task' if first == again else 'DIFFERENT (bug)'}, "
                  f"{producer.stats.deduplicated} repeat dropped before the broker")

    console.rule("bad input")
    try:
        with TaskProducer(settings, source="demo") as producer:
            producer.submit(TaskType.GENERATION, {"prompt": "a dress", "style_lora_weight": 1.7})
    except TaskValidationError as exc:
        console.print(f"refused, nothing produced: {exc}")


def _show_tasks(settings: KafkaSettings, codec: EventCodec, ids: dict[TaskType, str],
                console: Console) -> None:
    table = Table(title="tasks read back from their per-type topics (independent reader)")
    for column in ("type", "task id", "offset", "parameters"):
        table.add_column(column, no_wrap=column != "parameters")
    for task_type, task_id in ids.items():
        topic = settings.topics.task(task_type)
        [record] = list(tail(settings, topic, codec=codec, from_beginning=True, max_records=1,
                             idle_timeout_s=_READ_IDLE_TIMEOUT_S))
        params = [k for k, v in record["value"]["params"].items() if v not in (None, [])]
        assert record["key"] == task_id, (record["key"], task_id)
        shown = ", ".join(params)
        table.add_row(task_type.value, task_id[:8], str(record["offset"]), shown)
    console.print(table)


def _show_statuses(settings: KafkaSettings, codec: EventCodec, ids: dict[TaskType, str],
                   console: Console) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for record in tail(settings, settings.topics.status, codec=codec, from_beginning=True,
                       max_records=2 * len(ids), idle_timeout_s=_READ_IDLE_TIMEOUT_S):
        seen[record["key"]].append(record["value"]["status"])
    table = Table(title="status events on " + settings.topics.status)
    table.add_column("type")
    table.add_column("task id")
    table.add_column("statuses, in order")
    for task_type, task_id in ids.items():
        table.add_row(task_type.value, task_id[:8], " → ".join(seen.get(task_id, ["(none)"])))
    console.print(table)
