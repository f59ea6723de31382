"""The processors' settings, read once (``PROCESSORS_*`` environment variables) and passed down.

Kafka connection settings live in :class:`schemas.kafka_settings.KafkaSettings` (``KAFKA_*``);
these say what the Faust app does with them. The tuning values were chosen with
``bench/bench_fold.py``; docs/PROCESSORS.md has the measurements behind them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.enums import PerTaskType, TaskType
from state.retry import RetrySettings


def _default_datadir() -> Path:
    return Path.home() / ".cache" / "compute-server" / "processors"


class ProcessorSettings(RetrySettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROCESSORS_", frozen=True, extra="ignore")

    # The Faust app id: the consumer group and the changelog topics' prefix. Empty: derived from
    # the topic prefix ("<prefix>.processors"), so deployments sharing a cluster stay apart.
    app_id: str = ""
    # disk:// keeps the tables in a SQLite file per table and process (processors/disk_store.py),
    # memory:// in RAM; both rebuild them from their changelogs at every start, and only
    # disk:// keeps the processors' memory flat however many tasks they have seen.
    store: str = "disk://"
    datadir: Path = Field(default_factory=_default_datadir)
    # Static group membership (Kafka's group.instance.id): a worker restarted under the same id
    # (a pod name, a systemd instance) takes its partitions back at once instead of waiting for
    # the group to notice the old process is gone.
    group_instance_id: str | None = None
    # PROCESSORS_ORIGIN_ZONE: the zone or region this processor runs in, written as origin_zone
    # on the status events it writes (a lease time-out, a retry's QUEUED; issue 17).
    origin_zone: str | None = None
    # A worker silent for this long loses its partitions to the others: 30 s, against Faust's
    # 60, so a crashed worker's tasks move on sooner (heartbeats go every 3 s).
    session_timeout_s: float = Field(default=30.0, ge=6.0)

    # ---- leases
    # A PROCESSING task whose worker sent nothing for this long is timed out. Workers report
    # progress only while a handler does, and stop a handler at their own time limit (600 s by
    # default, WORKER_TASK_TIMEOUT_S) plus a 30 s grace, emitting a terminal status: the lease
    # must outlast that, or a slow but healthy task would run twice. 15 minutes.
    lease_s: float = Field(default=900.0, gt=0)
    # Per-type leases (PROCESSORS_LEASES_S='{"video_generation": 2100}'); video's worker limit is
    # 1800 s.
    leases_s: PerTaskType = Field(
        default_factory=lambda: {TaskType.VIDEO_GENERATION: 2100.0}
    )
    # How often the lease timer looks. A lease is resolved at most this much (plus the commit
    # interval, see docs/PROCESSORS.md) after it ran out: 10 s against leases of minutes.
    lease_check_interval_s: float = Field(default=10.0, gt=0)

    # ---- throughput (measured with bench/bench_fold.py; docs/PROCESSORS.md)
    # Records folded per batch: each task's state is written to the table and the state topic
    # once per batch, so a bigger batch writes less when a task has several events in flight.
    batch_max: int = Field(default=2_000, ge=1)
    # ...and how long a batch may wait to fill: the added latency when the topic is quiet.
    batch_within_s: float = Field(default=0.05, gt=0)
    # Records Faust buffers per partition ahead of the agent: room for several batches (Faust's
    # 4096 measured the same, within noise).
    stream_buffer_maxsize: int = Field(default=16_384, ge=1)
    # The broker answers a fetch when it has this many bytes or after this long, whichever
    # comes first (faust's aiokafka consumer would ask for 1 byte: a fetch and a trip through
    # the app per record at a trickle; processors/transport.py). 50 ms, like batch_within_s.
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    fetch_max_wait_ms: int = Field(default=50, ge=0, le=1500)
    # Records aiokafka returns per poll (None: everything fetched).
    max_poll_records: int | None = Field(default=None, ge=1)
    # Bytes fetched per partition per request: 4 MiB is ~10k status records (1 MiB measured the
    # same; more per fetch means fewer round trips when catching up).
    max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Commit offsets after this many acked records or this long, whichever comes first: the
    # interval bounds the replay after a crash, and how soon a lease can be judged (the lease
    # timer trusts only committed offsets).
    commit_every: int = Field(default=50_000, ge=1)
    commit_interval_s: float = Field(default=2.8, gt=0)
    # Producer batching: 10 ms of linger lets a batch of state records leave in few requests
    # (0 and 50 ms measured the same against one local broker).
    producer_linger_ms: int = Field(default=10, ge=0)
    producer_max_batch_size: int = Field(default=1024 * 1024, ge=1024)
    # No compression: aiokafka would compress in this process's one thread (lz4 needs a package
    # we do not pin; gzip costs CPU the fold needs). Records are 0.5-1 KB of JSON.
    producer_compression: str | None = None
    # Standby replicas of the tables on other workers: a failover then recovers from a warm copy.
    table_standby_replicas: int = Field(default=1, ge=0)
    # Niceness the process adds to itself at start (0: none). The processors' work is
    # throughput work (a batch waits up to batch_within_s anyway); on a machine they share with
    # workers, the broker and the API (the local stack, one box), a fold's burst of CPU then
    # waits for a task's next step instead of delaying it. Where they run alone it changes
    # nothing. Issue 19: docs/PERFORMANCE.md, "Figures of 2026-12-07, 18:11".
    cpu_nice: int = Field(default=10, ge=0, le=19)

    # ---- the generations orchestrator (processors/orchestrator.py)
    # Tests and demos only: scores of the "scripted" evaluator, which is registered only when
    # this is set. JSON: {"<prompt prefix>": [score or [score, [reasons]], ...]}: attempt n of a
    # shot whose prompt starts with the prefix gets the n-th entry (the longest prefix wins).
    evaluator_script: dict[str, list[float | tuple[float, list[str]]]] | None = None

    def app_id_for(self, topic_prefix: str) -> str:
        return self.app_id or f"{topic_prefix}.processors"

    def lease_for(self, task_type: TaskType | None) -> float:
        if task_type is None:
            return self.lease_s
        return self.leases_s.get(task_type, self.lease_s)

