"""``computectl worker``: run a worker process for some task types until SIGTERM.

Everything is read from the environment once (``KAFKA_*``, ``WORKER_*``, ``RESULTS_URL``,
``RESULTS_FSYNC``, ``S3_ENDPOINT_URL``, ``INPUT_*``, ``COMPUTE_MODEL_*``) and passed down. Exit
status: 0 after a clean stop, 1 when the worker stopped unhealthy (the broker stopped
acknowledging, or, with ``WORKER_EXECUTION=inline``, a handler ignored its cancel token): let the
process supervisor start a fresh one. By default the handlers run in a child process that the
worker itself kills and replaces (``gpu_consumers.supervisor``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from schemas.enums import TaskType

if TYPE_CHECKING:
    from gpu_consumers.runtime import Worker

# Burst mode without --idle-timeout: stop after this long without a record.
DEFAULT_BURST_IDLE_S = 5.0


def _parse_types(text: str | None) -> list[TaskType] | None:
    if not text:
        return None
    try:
        return [TaskType.parse(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--types") from None


def build_worker(types: list[TaskType] | None) -> Worker:
    """The Worker with the store, fetcher, model registry and handlers from the environment.

    Without ``types`` (and no ``WORKER_TYPES``), it serves every type that has a handler."""
    from gpu_consumers.handlers.handler_set import registry
    from gpu_consumers.inputs import InputSettings
    from gpu_consumers.models import ModelRegistry
    from gpu_consumers.runtime import Worker
    from gpu_consumers.settings import WorkerSettings
    from gpu_consumers.storage import StorageSettings
    from schemas.codec import EventCodec
    from schemas.kafka_settings import KafkaSettings
    from schemas.schema_store import SchemaStoreReader

    kafka = KafkaSettings()
    settings = WorkerSettings(types=types) if types else WorkerSettings()
    handlers = registry(settings.types)
    if not types and "WORKER_TYPES" not in os.environ:
        served = [t for t in settings.types if t in handlers]
        skipped = [t.slug for t in settings.types if t not in handlers]
        if skipped:
            logging.getLogger("gpu_consumers.worker").warning(
                "no handler for %s: not served", ", ".join(skipped))
        settings = settings.model_copy(update={"types": served})
    missing = [t.slug for t in settings.types if t not in handlers]
    if missing or not settings.types:
        raise click.UsageError(f"no handler for task type(s): {', '.join(missing) or 'any'}")
    # The worker's results URL (RESULTS_URL or WORKER_RESULTS_URL), the other storage settings.
    store = StorageSettings().model_copy(update={"results_url": settings.results_url}).open()
    registry_env = {**os.environ, "COMPUTE_MODEL_PROFILE": settings.model_profile,
                    "COMPUTE_MODEL_CACHE_DIR": str(settings.model_cache_dir)}
    if TaskType.LLM_INTERACTION in settings.types:
        _refuse_blind_judges(ModelRegistry.from_env(registry_env))
    # Supervised (the default): the handler process builds the fetcher and the models, and keeps
    # them warm; this process only needs the handler classes, to check the served types. Inputs
    # are scoped against the store this worker writes (gpu_consumers.input_scope).
    child = functools.partial(child_kit, settings.types,
                              InputSettings(results_url=settings.results_url), registry_env,
                              settings.resolved_device(), settings.providers)
    fetcher = models = None
    if settings.execution == "inline":
        kit = child()
        fetcher, models = kit.fetcher, kit.models
    registry_client = None
    if kafka.schema_registry_url:
        from schemas.schema_registry import HttpSchemaRegistry

        registry_client = HttpSchemaRegistry(kafka.schema_registry_url)
    codec = EventCodec(registry=registry_client, lookup_fingerprint=SchemaStoreReader(kafka))
    return Worker(kafka, settings, handlers, store, fetcher, models, codec=codec, child=child)


def child_kit(types: list[TaskType], input_settings: Any, registry_env: dict[str, str],
              device: str, providers: Any = None) -> Any:
    """The handlers, input fetcher and model cache of a worker, built where they run (the
    handler process, or the worker itself when inline). Module-level: pickled by reference."""
    from gpu_consumers.handlers.handler_set import registry
    from gpu_consumers.inputs import InputFetcher
    from gpu_consumers.model_cache import ModelCache
    from gpu_consumers.models import ModelRegistry
    from gpu_consumers.providers import with_provider_handlers
    from gpu_consumers.supervisor import ChildKit

    models = ModelCache(ModelRegistry.from_env(registry_env), device=device)
    # The configured providers' handler entries (route:<name>), as the worker process has them.
    handlers = with_provider_handlers(registry(types), providers or {})
    return ChildKit(handlers, InputFetcher(input_settings), models, device)


def _refuse_blind_judges(registry: Any) -> None:
    """LLM_INTERACTION's image providers need models that see: exit now, with one line naming
    the model and the setting, rather than judge images blind (gpu_consumers/models/judges.py)."""
    from gpu_consumers.models.judges import JudgeModelError, check_judge_models

    try:
        check_judge_models(registry)
    except JudgeModelError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def stop_on_signals(the_worker: Any) -> Iterator[None]:
    """SIGTERM/SIGINT stop the worker after its current task (within ``shutdown_grace_s``); a
    second signal cancels the current task at once."""
    seen = 0

    def handle(signum: int, frame: Any) -> None:
        nonlocal seen
        seen += 1
        the_worker.stop(now=seen > 1)  # only sets flags: safe in a signal handler

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@click.command("worker")
@click.option("--types", "types_text", metavar="TYPE,TYPE",
              help="Task types to serve (generation,editing,...). Default: WORKER_TYPES, else "
                   "every type that has a handler.")
@click.option("--burst", is_flag=True, help="Stop once the topics stay idle (tests, batch jobs).")
@click.option("--max-tasks", type=click.IntRange(min=1), help="Stop after this many records.")
@click.option("--idle-timeout", type=click.FloatRange(min=0),
              help=f"With --burst: seconds without a record before stopping "
                   f"(default {DEFAULT_BURST_IDLE_S:g}).")
@click.option("--json", "as_json", is_flag=True, help="Print the final counters as JSON.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def worker(types_text: str | None, burst: bool, max_tasks: int | None,
           idle_timeout: float | None, as_json: bool, log_level: str) -> None:
    """Run tasks from the task topics: one consumer group per type, one task at a time."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    the_worker = build_worker(_parse_types(types_text))
    idle = (idle_timeout if idle_timeout is not None else DEFAULT_BURST_IDLE_S) if burst else None
    with stop_on_signals(the_worker):
        stats = the_worker.run(max_tasks=max_tasks, idle_timeout_s=idle)
    summary = {"worker_id": the_worker.worker_id, "healthy": the_worker.healthy,
               **dataclasses.asdict(stats)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in summary.items()), err=True)
    if not the_worker.healthy:
        sys.exit(1)


if __name__ == "__main__":  # python -m gpu_consumers.cli
    worker()
