"""Monitoring data: queue backlog from consumer-group lag, live workers, task statistics.

The Kafka calls block (run them in a worker thread); the statistics come from the read model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.enums import TaskType
from schemas.kafka_settings import KafkaSettings

_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class QueueLag:
    task_type: TaskType
    topic: str
    group_id: str
    backlog: int  # records not yet committed by the type's worker group
    partitions: int


@dataclass(frozen=True)
class GroupMembers:
    task_type: TaskType
    group_id: str
    state: str
    members: list[dict[str, str]]


def worker_group(prefix: str, task_type: TaskType) -> str:
    """The worker group of a task type (gpu_consumers: ``<group_prefix>.<type slug>``)."""
    return f"{prefix}.{task_type.slug}"


class KafkaMonitor:
    def __init__(self, kafka: KafkaSettings, group_prefix: str) -> None:
        self._kafka = kafka
        self._prefix = group_prefix
        self._admin = AdminClient(kafka.client_config())

    def queues(self) -> list[QueueLag]:
        """Backlog per task type: high watermark minus the group's committed offset (or minus
        the low watermark where the group has committed nothing)."""
        from confluent_kafka import Consumer

        topics = self._kafka.topics
        meta = self._admin.list_topics(timeout=_TIMEOUT_S).topics
        probe = Consumer({**self._kafka.client_config(), "group.id": "compute-api-monitor",
                          "enable.auto.commit": False})
        try:
            out = []
            for task_type in TaskType:
                topic, group = topics.task(task_type), worker_group(self._prefix, task_type)
                parts = sorted(meta[topic].partitions) if topic in meta else []
                committed = self._committed(group, topic, parts)
                backlog = 0
                for p in parts:
                    low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)
                    start = committed.get(p)
                    backlog += max(0, high - (start if start is not None and start >= 0 else low))
                out.append(QueueLag(task_type, topic, group, backlog, len(parts)))
            return out
        finally:
            probe.close()

    def _committed(self, group: str, topic: str, parts: list[int]) -> dict[int, int]:
        if not parts:
            return {}
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])]
        result = self._admin.list_consumer_group_offsets(request, request_timeout=_TIMEOUT_S)
        answer = result[group].result()
        return {tp.partition: tp.offset for tp in answer.topic_partitions if tp.error is None}

    def workers(self) -> list[GroupMembers]:
        groups = {worker_group(self._prefix, t): t for t in TaskType}
        futures = self._admin.describe_consumer_groups(list(groups), request_timeout=_TIMEOUT_S)
        out = []
        for group_id, future in futures.items():
            desc = future.result()
            members = [{"client_id": m.client_id, "host": m.host, "member_id": m.member_id}
                       for m in desc.members]
            state = getattr(desc.state, "name", str(desc.state))
            out.append(GroupMembers(groups[group_id], group_id, state, members))
        return sorted(out, key=lambda g: g.task_type.value)


async def task_stats(conn: psycopg.AsyncConnection, tenant_id: str) -> dict[str, Any]:
    """Counts by status and type, failure rate, p50/p95 processing times of a tenant's tasks."""
    cur = await conn.execute(
        "SELECT task_type, status, count(*) AS n FROM tasks WHERE origin_tenant_id = %s"
        " GROUP BY 1, 2 ORDER BY 1, 2", (tenant_id,))
    counts = await cur.fetchall()
    cur = await conn.execute(
        "SELECT task_type,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95"
        " FROM tasks WHERE origin_tenant_id = %s AND status = 'COMPLETED'"
        " AND duration_ms IS NOT NULL GROUP BY 1 ORDER BY 1", (tenant_id,))
    durations = {r["task_type"]: r for r in await cur.fetchall()}
    # Results a fallback provider produced (the worker stamps the reason in their metadata).
    cur = await conn.execute(
        "SELECT task_type, result->'metadata'->>'fallback_reason' AS reason, count(*) AS n"
        " FROM tasks WHERE origin_tenant_id = %s AND status = 'COMPLETED'"
        " AND result->'metadata'->>'fallback_reason' IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        (tenant_id,))
    fallbacks = await cur.fetchall()
    return {"counts": counts, "durations": durations, "fallbacks": fallbacks}


async def oldest_queued_s(conn: psycopg.AsyncConnection) -> dict[str, float]:
    """Per task type, how long the oldest QUEUED task of any tenant has waited (operators)."""
    cur = await conn.execute(
        "SELECT task_type, extract(epoch FROM now() - min(queued_at)) AS age FROM tasks"
        " WHERE status = 'QUEUED' GROUP BY 1")
    return {r["task_type"]: float(r["age"]) for r in await cur.fetchall()}
