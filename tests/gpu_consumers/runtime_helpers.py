"""Helpers of the worker-runtime tests: a scripted handler, the status topic folded per task,
workers run in threads, submitting, cancelling, committed offsets."""

from __future__ import annotations

import io
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Producer
from PIL import Image

from gpu_consumers.errors import InvalidInput, ProviderError, StorageFailure
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.runtime import Worker, WorkerStats
from gpu_consumers.settings import WorkerSettings
from gpu_consumers.storage import FileStore, tenant_segment
from producers.submit import TaskProducer
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.enums import TaskType
from schemas.events import CancelRequested, Envelope
from schemas.kafka_settings import KafkaSettings
from tests.kafka_helpers import committed_total

TYPE = TaskType.IMAGE_ADJUSTER
DEADLINE_S = 30.0
RELEASE = threading.Event()  # frees handlers that ignore their cancel token, at the end of a test
FAILURES = {"PROVIDER_ERROR": ProviderError, "STORAGE_ERROR": StorageFailure, "INVALID_INPUT": InvalidInput}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class Scripted:
    """Does what the task's ``prompt`` says: ``ok``; ``fail:<CODE>:<k>`` (fails attempts 1..k);
    ``steps:<n>:<seconds>`` (n steps, cancel check + progress each); ``hang`` (ignores cancel);
    ``crash`` (a plain exception); ``oom:<once|always>`` (torch's CUDA out-of-memory error,
    once: only while ``ctx.low_memory`` is off)."""

    task_type = TYPE
    providers = ("test",)

    def __init__(self, hang_is_ok: bool = False) -> None:
        self.hang_is_ok = hang_is_ok
        self.runs: list[tuple[str, int]] = []
        self.low_memory: list[bool] = []
        self._started: dict[str, threading.Event] = defaultdict(threading.Event)

    def started(self, task_id: str) -> threading.Event:
        return self._started[task_id]

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
        self.runs.append((ctx.task_id, ctx.attempt))
        self.low_memory.append(ctx.low_memory)
        self._started[ctx.task_id].set()
        verb, *args = params.prompt.split(":")
        if verb == "fail" and ctx.attempt <= int(args[1]):
            raise FAILURES[args[0]](f"scripted {args[0]} on attempt {ctx.attempt}")
        if verb == "steps":
            n, step_s = int(args[0]), float(args[1])
            for i in range(n):
                ctx.cancel.raise_if_cancelled()
                time.sleep(step_s)  # the simulated work of one denoising step
                ctx.progress((i + 1) / n)
        if verb == "hang" and not self.hang_is_ok:
            RELEASE.wait(DEADLINE_S)
        if verb == "crash":
            raise RuntimeError("boom")
        if verb == "oom" and (args[0] == "always" or not ctx.low_memory):
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (scripted)")
        return HandlerResult(outputs=[OutputFile(PNG, "image/png", ".png")], model="scripted",
                             provider="test", seed=7, width=1, height=1)


# --------------------------------------------------------------------------- helpers


class Running:
    """A worker's ``run`` in a thread."""

    def __init__(self, worker: Worker, **run_kwargs: Any) -> None:
        self.worker = worker
        self.stats: WorkerStats | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, kwargs=run_kwargs, daemon=True)
        self._thread.start()

    def _run(self, **kwargs: Any) -> None:
        try:
            self.stats = self.worker.run(**kwargs)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout_s: float = DEADLINE_S) -> WorkerStats:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


def worker_settings(kafka: KafkaSettings, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = dict(
        types=[TYPE], group_prefix=f"{kafka.topic_prefix}-workers", progress_interval_s=0.5,
        retry_backoff_base_s=0.05, retry_jitter=0.0, task_timeout_s=20.0, timeout_grace_s=2.0,
        shutdown_grace_s=5.0, rebalance_wait_s=1.0, device="cpu",
        # The scripted handlers share state with the test: in the worker's process.
        execution="inline")
    return WorkerSettings(**{**values, **overrides})


def make_worker(kafka: KafkaSettings, handler: Any, store: Any, *, fetcher: Any = None,
                **overrides: Any) -> Worker:
    return Worker(kafka, worker_settings(kafka, **overrides), {TYPE: {"test": lambda: handler}},
                  store, fetcher, None)


def submit(kafka: KafkaSettings, *prompts: str, base_image_url: str = "file:///nowhere.png") -> list[str]:
    with TaskProducer(kafka) as producer:
        return [producer.submit(TYPE, {"base_image_url": base_image_url, "prompt": p}) for p in prompts]


def request_cancel(kafka: KafkaSettings, task_id: str) -> None:
    producer = Producer(kafka.producer_config())
    event = CancelRequested(envelope=Envelope.new(task_id, TYPE, source="test"), reason="test")
    produce_event(producer, kafka.topics.control, event, codec=EventCodec())
    assert producer.flush(10) == 0


def committed(kafka: KafkaSettings) -> int:
    """Sum of the committed offsets of the worker group on the task topic."""
    return committed_total(kafka, kafka.topics.task(TYPE), f"{kafka.topic_prefix}-workers.{TYPE.slug}")


def files_of(results_dir: Any, task_id: str, tenant_id: str | None = None) -> list[str]:
    folder = results_dir / tenant_segment(tenant_id) / task_id
    return sorted(str(p) for p in folder.rglob("*") if p.is_file())


class GatedStore(FileStore):
    """Holds every ``put`` until released, to cancel a task between storing and COMPLETED."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.stored, self.release = threading.Event(), threading.Event()
        self.deleted: list[str] = []

    def put(self, task_id: str, attempt: int, name: str, output: OutputFile, *,
            tenant_id: str | None = None) -> str:
        url = super().put(task_id, attempt, name, output, tenant_id=tenant_id)
        self.stored.set()
        self.release.wait(DEADLINE_S)
        return url

    def delete(self, url: str) -> None:
        super().delete(url)
        self.deleted.append(url)
