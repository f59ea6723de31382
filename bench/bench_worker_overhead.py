"""Benchmark: what the worker runtime adds to each task, against calling the handler directly.

Two workloads on the CPU with the offline model profile: IMAGE_ADJUSTER (``classical``, pure
numpy: the handler takes ~1 ms, so the runtime's own cost is plain to see) and GENERATION
(``diffusers``, the tiny random-weight SD pipeline, 64x64, 2 steps). For each:

1. **direct**: the same handler instance (same warm ModelCache, same InputFetcher) called N times
   in a loop; median wall time of ``handler.run``;
2. **worker**: N tasks submitted with the producer, run by an in-process :class:`Worker` in burst
   mode on the real broker (the ``computectl worker`` code path minus process start). The
   handler and the output store are wrapped in timers, and per task:

   * ``around_handler`` = COMPLETED.occurred_at - PROCESSING.occurred_at - handler time: the
     PROCESSING emit, the handler's thread, the output store (a file:// folder: write + fsync
     + rename), the result record and the COMPLETED event. ``store`` is reported on its own;
   * ``record_to_record`` = (next task's PROCESSING.occurred_at - this one's) - handler time:
     everything the worker does per record, including waiting for the broker to acknowledge
     COMPLETED, the synchronous offset commit, fetching and decoding the next record. Tasks are
     queued up front, so there is no idle time in it.

The ``timing_ms`` each result records is checked against the handler timer (it is the same
span, truncated to whole ms). Also runs ``bench/bench_lora_switch.py --json`` (LoRA switch time
with adapters cached, target <= 50 ms) unless ``--no-lora``.

    .venv/bin/python bench/bench_worker_overhead.py [--tasks 200] [--json]

Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts a local broker. Target: < 5 ms median overhead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_consumers.handlers.base import CancelToken, HandlerResult, TaskContext  # noqa: E402
from gpu_consumers.inputs import InputFetcher, InputSettings  # noqa: E402
from gpu_consumers.runtime import Worker  # noqa: E402
from gpu_consumers.settings import WorkerSettings  # noqa: E402
from gpu_consumers.storage import FileStore  # noqa: E402
from producers.submit import TaskProducer, validate_params  # noqa: E402
from schemas.codec import EventCodec  # noqa: E402
from schemas.enums import TaskStatus, TaskType  # noqa: E402
from schemas.events import StatusChanged  # noqa: E402
from schemas.kafka_settings import KafkaSettings  # noqa: E402
from schemas.topic_admin import ensure_topics  # noqa: E402

TARGET_MS = 5.0
BENCH_DIR = Path(__file__).resolve().parent


class TimedHandler:
    """Delegates to a handler and records each call's wall time by task id."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.task_type, self.providers = inner.task_type, inner.providers
        self.elapsed_s: dict[str, float] = {}

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
        start = time.perf_counter()
        try:
            return self.inner.run(params, ctx)
        finally:
            self.elapsed_s[ctx.task_id] = time.perf_counter() - start


class TimedStore(FileStore):
    """The file:// store (the embedded default), timing each ``put`` by task id."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.put_s: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, task_id: str, attempt: int, name: str, output: Any, *,
            tenant_id: str | None = None) -> str:
        start = time.perf_counter()
        url = super().put(task_id, attempt, name, output, tenant_id=tenant_id)
        with self._lock:
            self.put_s[task_id] = self.put_s.get(task_id, 0.0) + time.perf_counter() - start
        return url


def _stats(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {"median": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
            "mean": round(statistics.fmean(ordered), 3)}


def _handler(task_type: TaskType) -> Any:
    if task_type is TaskType.IMAGE_ADJUSTER:
        from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler

        return ImageAdjusterHandler()
    from gpu_consumers.handlers.generation import DiffusersGeneration

    return DiffusersGeneration()


def _params(task_type: TaskType, image_url: str) -> dict[str, Any]:
    if task_type is TaskType.IMAGE_ADJUSTER:
        return {"base_image_url": image_url, "brightness": 0.1, "contrast": 0.2, "warmth": 0.3}
    return {"prompt": "a blue summer dress", "width": 64, "height": 64, "seed": 1}


def _read_statuses(kafka: KafkaSettings, task_ids: set[str], timeout_s: float = 120.0
                   ) -> dict[str, list[StatusChanged]]:
    codec, topic = EventCodec(), kafka.topics.status
    consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    events: dict[str, list[StatusChanged]] = {t: [] for t in task_ids}
    done: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while len(done) < len(task_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(done)} of {len(task_ids)} tasks COMPLETED")
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            event = codec.decode(msg.value(), expect=StatusChanged)
            if event.envelope.task_id in events:
                events[event.envelope.task_id].append(event)
                if event.status is TaskStatus.COMPLETED:
                    done.add(event.envelope.task_id)
    finally:
        consumer.close()
    return events


def bench_type(task_type: TaskType, tasks: int, kafka: KafkaSettings, models: Any,
               fetcher: InputFetcher, image_url: str, workdir: Path) -> dict[str, Any]:
    handler = TimedHandler(_handler(task_type))
    params = _params(task_type, image_url)
    valid = validate_params(task_type, params)

    # 1. direct: the handler alone, warm (the first calls load the model)
    ctx = TaskContext(task_id="direct", attempt=1, progress=lambda f: None, cancel=CancelToken(),
                      fetch=fetcher, models=models, device="cpu")
    for _ in range(3):
        handler.inner.run(valid, ctx)
    direct_ms = []
    for _ in range(tasks):
        start = time.perf_counter()
        handler.inner.run(valid, ctx)
        direct_ms.append((time.perf_counter() - start) * 1e3)

    # 2. the same handler inside a worker, tasks queued up front
    store = TimedStore(workdir / f"results-{task_type.slug}")
    # inline: the bench's handler is an object of this process (and the in-process path is
    # what it measures); the supervised child's pipe adds its own cost, see docs/WORKERS.md.
    settings = WorkerSettings(types=[task_type], group_prefix=f"{kafka.topic_prefix}-bench",
                              device="cpu", execution="inline")
    with TaskProducer(kafka, source="bench") as producer:
        ids = [producer.submit(task_type, params) for _ in range(tasks)]
    worker = Worker(kafka, settings, {task_type: {"bench": lambda: handler}}, store, fetcher, models)
    started = time.perf_counter()
    stats = worker.run(max_tasks=tasks)
    worker_s = time.perf_counter() - started
    if stats.completed != tasks:
        raise RuntimeError(f"{task_type.value}: {stats}")
    del worker
    gc.collect()  # its producer and consumers go now, not when the broker is already gone
    events = _read_statuses(kafka, set(ids))

    spans = []  # (processing_at, completed_at, task_id)
    timing_gap_ms = []
    for task_id, evs in events.items():
        processing = min(e.envelope.occurred_at for e in evs
                         if e.status is TaskStatus.PROCESSING and e.envelope.source == "worker")
        completed = next(e for e in evs if e.status is TaskStatus.COMPLETED)
        spans.append((processing, completed.envelope.occurred_at, task_id))
        timing_gap_ms.append(handler.elapsed_s[task_id] * 1e3 - completed.result.metadata.timing_ms)
    spans.sort()
    in_worker_ms = [handler.elapsed_s[t] * 1e3 for _, _, t in spans]
    around_ms = [((c - p).total_seconds() - handler.elapsed_s[t]) * 1e3 for p, c, t in spans]
    store_ms = [store.put_s[t] * 1e3 for _, _, t in spans]
    cycle_ms = [((spans[i + 1][0] - p).total_seconds() - handler.elapsed_s[t]) * 1e3
                for i, (p, _, t) in enumerate(spans[:-1])]
    return {
        "task_type": task_type.value,
        "provider": handler.providers[0],
        "tasks": tasks,
        "direct_handler_ms": _stats(direct_ms),
        "handler_in_worker_ms": _stats(in_worker_ms),
        "around_handler_overhead_ms": _stats(around_ms),
        "store_put_ms": _stats(store_ms),
        "record_to_record_overhead_ms": _stats(cycle_ms),
        "timing_ms_vs_timer_ms": _stats(timing_gap_ms),
        "worker_tasks_per_s": round(tasks / worker_s, 2),
    }


def lora_switch() -> dict[str, Any] | None:
    script = BENCH_DIR / "bench_lora_switch.py"
    if not script.is_file():
        return None
    done = subprocess.run([sys.executable, str(script), "--json"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(report: dict[str, Any]) -> str:
    rows = [("workload", "direct", "in worker", "around handler", "  of which store",
             "record to record", "tasks/s")]
    for r in report["workloads"]:
        fmt = "{median:.2f} / {p95:.2f}".format
        rows.append((f"{r['task_type']} ({r['provider']})", fmt(**r["direct_handler_ms"]),
                     fmt(**r["handler_in_worker_ms"]), fmt(**r["around_handler_overhead_ms"]),
                     fmt(**r["store_put_ms"]), fmt(**r["record_to_record_overhead_ms"]),
                     f"{r['worker_tasks_per_s']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(ms, median / p95 over the tasks; overheads exclude the handler's own time; "
                 f"target < {TARGET_MS:g} ms median)")
    lora = report.get("lora_switch")
    if lora and "switch_median_ms" in lora:
        lines.append(f"LoRA switch, adapters cached: median {lora['switch_median_ms']:.2f} ms, "
                     f"p90 {lora['switch_p90_ms']:.2f} ms, max {lora['switch_max_ms']:.2f} ms "
                     f"(target <= {lora['target_ms']} ms)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per workload")
    parser.add_argument("--types", default="image_adjuster,generation",
                        help="workloads: image_adjuster, generation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA switch benchmark")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    types = [TaskType.parse(t) for t in args.types.split(",") if t.strip()]

    import torch

    from gpu_consumers.model_cache import ModelCache
    from gpu_consumers.models import ModelProfile, ModelRegistry

    torch.set_num_threads(args.threads)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        workdir = Path(folder)
        started = time.perf_counter()
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from devstack.kafka import KafkaBroker

            bootstrap = stack.enter_context(KafkaBroker()).bootstrap_servers
        broker_s = time.perf_counter() - started
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                              partitions=1)
        ensure_topics(kafka)
        image = workdir / "look.png"
        Image.new("RGB", (64, 64), (120, 90, 200)).save(image)
        fetcher = InputFetcher(InputSettings(allowed_file_roots=[workdir]))
        models = ModelCache(ModelRegistry(ModelProfile.OFFLINE, workdir / "models"), device="cpu")
        workloads = [bench_type(t, args.tasks, kafka, models, fetcher, image.as_uri(), workdir)
                     for t in types]
        fetcher.close()
    report: dict[str, Any] = {
        "bench": "worker_overhead",
        "profile": "offline",
        "device": "cpu",
        "target_median_ms": TARGET_MS,
        "workloads": workloads,
        "lora_switch": None if args.no_lora else lora_switch(),
        "broker_start_s": round(broker_s, 1) if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))
    if not args.json:
        print(_table(report))


if __name__ == "__main__":
    main()
