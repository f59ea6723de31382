"""``computectl demo``: the main flow on the embedded local stack, start to clean stop.

Today's flow (it grows with the system): start Kafka, PostgreSQL and the S3 endpoint; create the
topics; submit one task of each of the ten types; read every task back from its per-type topic
with an independent reader; show its PENDING → QUEUED status events; show that a repeated
idempotency key is the same task; show a refused bad task. Then the workers: write tiny input
images, start one ``computectl worker`` process for all ten types (offline model profile, models
cached in ``.cache/models``), run one task of each type with ``file://`` inputs, fold the status
topic until each is terminal and show the results (kept in ``.cache/demo-results``); stop the
worker and everything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from producers.examples import SEED_EXAMPLES
from producers.submit import TaskProducer
from producers.tail import tail
from schemas.codec import EventCodec
from schemas.enums import TaskType
from schemas.errors import TaskValidationError
from schemas.events import StatusChanged
from schemas.kafka_settings import KafkaSettings
from state.lifecycle import fold
from schemas.topic_admin import ensure_topics

# A record written a moment ago is readable within well under a second on a local broker; the
# reader stops once it has them all, this is only the bound.
_READ_IDLE_TIMEOUT_S = 10.0
_REPO = Path(__file__).resolve().parents[1]
_WORKER_GROUPS = "demo-workers"  # WORKER_GROUP_PREFIX of the demo's worker
# The whole worker part: start, first-run model builds (later runs load them from .cache/models),
# ten tasks. A task not terminal by then is shown as it stands.
_WORKER_DEADLINE_S = 150.0


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
        run_workers(stack, settings, console)
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


# --------------------------------------------------------------------------- the workers


def _demo_tasks(folder: Path) -> dict[TaskType, dict]:
    """One small task of each type, its inputs written into ``folder`` as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    look = Image.new("RGB", (64, 96), (232, 230, 226))
    draw = ImageDraw.Draw(look)
    draw.rectangle((22, 30, 42, 90), fill=(30, 60, 150))  # a blue dress on a studio backdrop
    draw.ellipse((24, 6, 40, 28), fill=(224, 172, 140))  # and a face above it
    for box in ((28, 13, 31, 16), (33, 13, 36, 16), (29, 21, 35, 23)):
        draw.ellipse(box, fill=(50, 30, 30))
    dress = Image.new("RGB", (64, 64), (180, 30, 40))
    urls = {}
    for name, image in (("look", look), ("dress", dress)):
        image.save(folder / f"{name}.png")
        urls[name] = (folder / f"{name}.png").resolve().as_uri()
    img = urls["look"]
    return {
        TaskType.GENERATION: {"prompt": "a woman in a blue summer dress, studio light",
                              "width": 64, "height": 96, "seed": 42, "subject_lora_weight": 0.8,
                              "product_lora_weight": 0.9},
        TaskType.EDITING: {"base_image_url": img, "prompt": "place the dress on the model",
                           "reference_images": [{"url": urls["dress"], "type": "garment"}],
                           "strength": 0.8},
        TaskType.REFINE: {"base_image_url": img, "upscale_factor": 2, "upscale_denoise": 0.3,
                          "face_detail_enabled": True},
        TaskType.VIDEO_GENERATION: {"base_image_url": img, "fps": 4, "duration": 1.0, "seed": 42},
        TaskType.BACKGROUND_FIX: {"base_image_url": img, "background_prompt": "white studio"},
        TaskType.FACE_ENHANCER: {"base_image_url": img, "strength": 0.5, "preserve_identity": True},
        TaskType.IMAGE_ADJUSTER: {"base_image_url": img, "brightness": 0.1, "contrast": 0.05,
                                  "saturation": -0.1, "warmth": 0.2},
        TaskType.DETAIL_ENHANCER: {"base_image_url": img, "strength": 0.4, "preserve_original": True},
        TaskType.BACKGROUND_REMOVE: {"image_url": img, "output_format": "png"},
        TaskType.LLM_INTERACTION: {"prompt": "Write a one-line caption for a blue summer dress.",
                                   "system_prompt": "You are a fashion copywriter.",
                                   "max_tokens": 16, "temperature": 0.7},
    }


def _start_groups_at_end(settings: KafkaSettings) -> None:
    """The tasks of part one carry placeholder URLs nobody can fetch: the worker groups start
    after them (their committed offsets are set to the end of each task topic)."""
    for task_type in TaskType:
        topic = settings.topics.task(task_type)
        consumer = Consumer({**settings.client_config(), "enable.auto.commit": False,
                             "group.id": f"{_WORKER_GROUPS}.{task_type.slug}"})
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10)[1]) for p in parts]
            consumer.commit(offsets=ends, asynchronous=False)
        finally:
            consumer.close()


def run_workers(stack, settings: KafkaSettings, console: Console) -> None:
    console.rule("workers: one task of each type, on real (tiny, offline) models")
    tasks = _demo_tasks(stack.results_dir / "demo-inputs")
    results = _REPO / ".cache" / "demo-results"
    results.mkdir(parents=True, exist_ok=True)
    _start_groups_at_end(settings)
    log_path = stack.results_dir / "worker.log"
    env = {**os.environ, **stack.env(), "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "WORKER_GROUP_PREFIX": _WORKER_GROUPS,
           "WORKER_DEVICE": "cpu", "RESULTS_URL": results.as_uri(),
           "COMPUTE_MODEL_PROFILE": "offline",
           "COMPUTE_MODEL_CACHE_DIR": str(_REPO / ".cache" / "models"),
           "INPUT_ALLOWED_FILE_ROOTS": str(stack.results_dir / "demo-inputs"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    types = ",".join(t.slug for t in TaskType)
    started = time.monotonic()
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", "from producers.cli import main; main()", "worker", "--types",
             types, "--burst", "--idle-timeout", "60", "--json", "--log-level", "WARNING"],
            env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    try:
        console.print(f"worker pid {worker.pid} serves all ten types (log: {log_path})")
        with TaskProducer(settings, source="demo") as producer:
            ids = {t: producer.submit(t, params) for t, params in tasks.items()}
        states = _wait_terminal(settings, ids, worker, console)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # stops after its current task
        try:
            out, _ = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    _show_results(ids, states, results.as_uri(), console)
    done = sum(1 for s in states.values() if s is not None and s.status.value == "COMPLETED")
    try:  # the worker prints its counters as one JSON line on a clean stop
        counters = json.loads((out or b"").decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        counters = {"exit status": worker.returncode}
    console.print(f"workers: {done} of {len(ids)} tasks COMPLETED in "
                  f"{time.monotonic() - started:.1f}s; worker stopped: {counters}")
    console.print(f"results kept in {results}; the offline models have random weights, so the "
                  "images are noise and the text is gibberish: what runs is the real code path")


def _wait_terminal(settings: KafkaSettings, ids: dict[TaskType, str], worker: subprocess.Popen,
                   console: Console) -> dict[str, object]:
    """Fold the status topic until every task is terminal, the worker died, or the deadline."""
    codec, wanted = EventCodec(), set(ids.values())
    states: dict[str, object] = dict.fromkeys(wanted)
    topic = settings.topics.status
    consumer = Consumer({**settings.client_config(), "group.id": "demo-status-reader",
                         "enable.auto.commit": False})
    deadline = time.monotonic() + _WORKER_DEADLINE_S
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        with console.status("running the tasks (the first run also builds the tiny models)..."):
            while time.monotonic() < deadline and worker.poll() is None:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error() and (msg.key() or b"").decode() in wanted:
                    event = codec.decode(msg.value(), expect=StatusChanged)
                    task_id = event.envelope.task_id
                    states[task_id] = fold(states[task_id], event)
                if all(s is not None and s.is_terminal for s in states.values()):
                    break
    finally:
        consumer.close()
    return states


def _show_results(ids: dict[TaskType, str], states: dict[str, object], base: str,
                  console: Console) -> None:
    table = Table(title=f"results in {base} (final status folded from the status topic)")
    for column in ("type", "status", "result", "timing_ms"):
        table.add_column(column, no_wrap=column != "result", overflow="fold")
    for task_type, task_id in ids.items():
        state = states.get(task_id)
        status = "(no status)" if state is None else state.status.value
        shown, timing = "", ""
        if state is not None and state.result is not None:
            result = state.result
            shown = ("text: " + repr(result.result_text[:60]) if result.result_text is not None
                     else "\n".join(u.removeprefix(base + "/") for u in result.output_urls))
            timing = str(result.metadata.timing_ms)
        elif state is not None and state.error_message:
            shown = f"{state.error_code.value}: {state.error_message[:120]}"
        table.add_row(task_type.value, status, shown, timing)
    console.print(table)
