"""The worker's settings, read once (``WORKER_*`` environment variables) and passed down.

Kafka connection settings live in :class:`schemas.kafka_settings.KafkaSettings` (``KAFKA_*``);
these are what a worker process does with them.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gpu_consumers.providers import ProviderRoutes, load_providers_file
from gpu_consumers.storage import default_results_url
from schemas.enums import PerTaskType, TaskType
from state.retry import RetrySettings

ContentPolicy = Callable[[Any], "str | None"]  # params -> reason for refusing, or None


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "compute-server" / "models"


class WorkerSettings(RetrySettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_", frozen=True, extra="ignore")

    # Task types this process serves, as slugs: WORKER_TYPES=generation,editing. Default: all.
    types: Annotated[list[TaskType], NoDecode] = Field(default_factory=lambda: list(TaskType))
    # The consumer group of type T is "<group_prefix>.<T slug>": every process serving T shares it.
    group_prefix: str = "compute-workers"
    # Static group membership (Kafka's group.instance.id, WORKER_GROUP_INSTANCE_ID): a worker
    # restarted under the same id (a pod name; `computectl up` gives each worker its service
    # name) takes its partitions back at once, instead of after the broker's session timeout
    # (45 s) spent waiting for the killed one. Unique per worker process of a group.
    group_instance_id: str | None = None
    # WORKER_ORIGIN_ZONE: the zone or region this worker runs in, written as origin_zone on the
    # status events it reports (their origin_instance is its worker id; issue 17).
    origin_zone: str | None = None
    # The consumer group protocol (docs/WORKERS.md, "Group membership"; gpu_consumers/
    # group_protocol.py). consumer: KIP-848 (Kafka 4.x), the broker assigns incrementally;
    # classic: the client rebalances (cooperative-sticky). auto: KIP-848 when the broker lets the
    # groups' session timeout be session_timeout_ms, else classic: measured in
    # bench/bench_rebalance.py (docs/PERFORMANCE.md, "Rebalance storm").
    group_protocol: Literal["auto", "classic", "consumer"] = "auto"
    # How long a silent member (SIGKILLed, crash-looping, frozen) keeps its partitions before
    # the broker gives them to the others: 10 s, not the 45 s default of both protocols, for which
    # a dead worker's queue stood still (issue 15). classic: the client's session.timeout.ms
    # (the broker allows >= group.min.session.timeout.ms, 6 s by default), heartbeats every third
    # of it; consumer: the group's consumer.session.timeout.ms, set on the broker by the worker.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    # How far back (seconds) a worker taking over a partition looks on the status topic for the
    # terminal status of the first records past the committed offset: a previous owner that
    # died between its terminal status and its commit finished them already (docs/WORKERS.md,
    # "Finished work is not run again"). 0 turns the check off.
    takeover_lookback_s: float = Field(default=300.0, ge=0)
    # The status records read at most for that check per partition taken over (then it runs).
    takeover_scan_max: int = Field(default=200_000, ge=1)
    # The worker keeps polling (with its partitions paused) while a task runs, so this limit only
    # bounds a stuck main loop, not a long task: ten minutes, after which the broker hands this
    # worker's partitions to a live member of the group.
    max_poll_interval_ms: int = Field(default=600_000, ge=10_000)

    # Time limit of one attempt, per type (WORKER_TASK_TIMEOUTS_S='{"video_generation": 1800}');
    # types not listed get task_timeout_s. Ten minutes: a large image job on a busy GPU.
    task_timeout_s: float = Field(default=600.0, gt=0)
    task_timeouts_s: PerTaskType = Field(
        # Image-to-video runs many frames through a UNet: three times the image budget.
        default_factory=lambda: {TaskType.VIDEO_GENERATION: 1800.0}
    )
    # After its deadline a handler gets this long to notice its cancel token (at its next
    # step); then its process is killed (supervised), or it is abandoned and the worker exits
    # after reporting the task (inline).
    timeout_grace_s: float = Field(default=30.0, ge=0)

    # supervised: handlers run in a child process that is killed and replaced when a task runs
    # past its time limit + grace, ignores a cancel, or crosses max_rss_bytes (docs/WORKERS.md).
    # inline: handlers run in a thread of the worker (tests and benchmarks that share objects
    # with the handler; a runaway handler can only be abandoned there).
    execution: Literal["supervised", "inline"] = "supervised"
    # After a user cancel or a shutdown, a handler that has not stopped within this is killed.
    cancel_grace_s: float = Field(default=5.0, ge=0)
    # Resident memory ceiling of the handler process, in bytes (WORKER_MAX_RSS_BYTES). None:
    # three quarters of the machine's memory; 0: no ceiling. GPU memory is not counted: a
    # CUDA out-of-memory error is the handler's own (one low_memory retry, then PROVIDER_ERROR).
    max_rss_bytes: int | None = Field(default=None, ge=0)
    # A fresh handler process imports torch and builds its handlers: allow for a busy machine.
    child_start_timeout_s: float = Field(default=300.0, gt=0)
    # Admission: work units (pixels x steps x frames) a task may ask for, per type, overriding
    # the model profile's budget (gpu_consumers/admission.py), e.g. '{"generation": 5e8}'.
    admission_budgets: PerTaskType = Field(default_factory=dict)

    # At most one PROCESSING progress event per this many seconds per task (≤ 2 events/s).
    progress_interval_s: float = Field(default=0.5, ge=0)
    # How long a PROCESSING (start or progress) event may wait to travel with the next record.
    # A terminal status is always sent at once (the worker flushes for its acknowledgement), so
    # a task that ends within this goes out as one produce request carrying PROCESSING and
    # COMPLETED: one fetch and one database transaction downstream instead of two. A longer
    # task's PROCESSING shows this much later. 0 sends every event on its own. 20 ms, not 5:
    # a quick task's handler step alone is 4-5 ms at the median on a busy 2-core machine, so
    # with 5 three tasks in five still sent two requests (issue 19).
    status_linger_ms: float = Field(default=20.0, ge=0, le=1000)
    # On SIGTERM the running task may finish within this; after it, it is aborted (no terminal
    # status, offset not committed: another worker of the group runs it again).
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # How long an assignment change may wait for the running task of a revoked partition to
    # finish and commit, before the partition is let go (its new owner then runs it again).
    rebalance_wait_s: float = Field(default=10.0, ge=0)
    # Cancelled task ids remembered from the control topic (oldest forgotten first).
    cancelled_capacity: int = Field(default=100_000, ge=1)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # offline: tiny random-weight models built locally (no downloads); production: real ids.
    model_profile: Literal["offline", "production"] = Field(
        default="offline",
        validation_alias=AliasChoices("WORKER_MODEL_PROFILE", "COMPUTE_MODEL_PROFILE"),
    )
    model_cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        validation_alias=AliasChoices("WORKER_MODEL_CACHE_DIR", "COMPUTE_MODEL_CACHE_DIR"),
    )
    # Where outputs go: file:///var/results or s3://bucket/prefix (default: a per-user folder).
    results_url: str = Field(
        default_factory=default_results_url,
        validation_alias=AliasChoices("RESULTS_URL", "WORKER_RESULTS_URL"),
    )
    # Optional "package.module:function" (or "package.module.function") taking the task's params
    # and returning a reason to refuse it, or None. A refusal ends FAILED/CONTENT_POLICY.
    content_policy: str | None = None
    # Per task type, a primary provider and an optional fallback, each with its own handler
    # implementation, provider_config defaults, models and capabilities (gpu_consumers/
    # providers.py; docs/WORKERS.md, "Provider fallback"). JSON in WORKER_PROVIDERS, or a YAML/JSON
    # file in WORKER_PROVIDERS_FILE (a type in both: WORKER_PROVIDERS wins). Empty: no routing.
    providers: ProviderRoutes = Field(default_factory=dict)
    providers_file: Path | None = None
    # Serve the worker's Prometheus metrics (provider fallbacks) on this port; None: not served.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    # ---- parsing ------------------------------------------------------------------------------

    @field_validator("types", mode="before")
    @classmethod
    def _parse_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [v if isinstance(v, TaskType) else TaskType.parse(str(v)) for v in value]
        return value

    @field_validator("types")
    @classmethod
    def _types_not_empty(cls, value: list[TaskType]) -> list[TaskType]:
        if not value:
            raise ValueError("at least one task type is needed")
        return list(dict.fromkeys(value))  # drop repeats, keep order

    @model_validator(mode="before")
    @classmethod
    def _read_providers_file(cls, data: Any) -> Any:
        # Read here, once, so a bad file stops the worker at start-up rather than failing tasks.
        if isinstance(data, dict) and data.get("providers_file"):
            from_file = load_providers_file(Path(data["providers_file"]))
            given = data.get("providers") or {}
            if isinstance(given, str):
                given = json.loads(given)
            data = {**data, "providers": {**from_file, **given}}
        return data

    # ---- derived ------------------------------------------------------------------------------

    def timeout_for(self, task_type: TaskType) -> float:
        return self.task_timeouts_s.get(task_type, self.task_timeout_s)

    def rss_ceiling(self) -> int:
        """``max_rss_bytes`` resolved: bytes, 0 for none."""
        if self.max_rss_bytes is not None:
            return self.max_rss_bytes
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4

    def group_id(self, task_type: TaskType) -> str:
        return f"{self.group_prefix}.{task_type.slug}"

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``; ``auto`` asks torch (imported only here, only for ``auto``)."""
        if self.device != "auto":
            return self.device
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load_content_policy(self) -> ContentPolicy | None:
        """Import the content-policy hook named by ``content_policy``; raise ValueError naming
        the setting when it cannot be imported."""
        if not self.content_policy:
            return None
        path = self.content_policy
        module_name, sep, attr = path.partition(":")
        if not sep:
            module_name, _, attr = path.rpartition(".")
        try:
            hook = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"WORKER_CONTENT_POLICY={path!r} cannot be imported: {exc}") from exc
        if not callable(hook):
            raise ValueError(f"WORKER_CONTENT_POLICY={path!r} is not callable")
        return hook
