"""/monitoring: queues (consumer-group lag), workers (live group members), stats.

Queues and workers span every tenant (backlogs, worker hosts and client ids): operator keys
only. Stats are the caller's own tenant's."""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, DbDep, MonitorDep, OperatorDep
from api.models.monitoring import (
    QueuePublic,
    QueuesPublic,
    StatsPublic,
    TypeStats,
    WorkerGroupPublic,
    WorkerMember,
    WorkersPublic,
)
from api.monitoring import oldest_queued_s, task_stats
from api.problems import ApiProblem
from api.routes.common import problem_responses
from api.routing import ApiRoute
from schemas.enums import TaskType

router = APIRouter(prefix="/monitoring", tags=["monitoring"], route_class=ApiRoute)


async def _kafka(call):  # type: ignore[no-untyped-def]
    try:
        return await run_in_threadpool(call)
    except Exception as exc:  # KafkaException, timeouts: the cluster did not answer
        raise ApiProblem(503, "broker-unavailable", f"Kafka did not answer: {type(exc).__name__}",
                         headers={"Retry-After": "1"}) from None


@router.get("/queues", response_model=QueuesPublic, responses=problem_responses(401, 403, 503))
async def queues(operator: OperatorDep, db: DbDep, monitor: MonitorDep) -> QueuesPublic:
    """Per task type: the backlog of its topic for its worker group, and the oldest wait of any
    tenant's QUEUED task. Operator keys only."""
    lags = await _kafka(monitor.queues)
    oldest = await oldest_queued_s(db)
    return QueuesPublic(queues=[QueuePublic(
        task_type=q.task_type, topic=q.topic, group_id=q.group_id, backlog=q.backlog,
        partitions=q.partitions, oldest_waiting_s=oldest.get(q.task_type.value)) for q in lags])


@router.get("/workers", response_model=WorkersPublic, responses=problem_responses(401, 403, 503))
async def workers(operator: OperatorDep, monitor: MonitorDep) -> WorkersPublic:
    """Live members of each task type's worker group. Operator keys only."""
    groups = await _kafka(monitor.workers)
    public = [WorkerGroupPublic(task_type=g.task_type, group_id=g.group_id, state=g.state,
                                members=[WorkerMember(**m) for m in g.members]) for g in groups]
    return WorkersPublic(groups=public, total_members=sum(len(g.members) for g in public))


def _failure_rate(by_status: dict[str, int]) -> float | None:
    ended = by_status.get("COMPLETED", 0) + by_status.get("FAILED", 0)
    return None if ended == 0 else by_status.get("FAILED", 0) / ended


@router.get("/stats", response_model=StatsPublic, responses=problem_responses(401))
async def stats(caller: CallerDep, db: DbDep) -> StatsPublic:
    """The caller's tasks: counts by status and type, failure rate, p50/p95 processing times."""
    raw = await task_stats(db, caller.tenant_id)
    per_type: dict[str, dict[str, int]] = defaultdict(dict)
    overall: dict[str, int] = defaultdict(int)
    fallbacks: dict[str, dict[str, int]] = defaultdict(dict)
    all_fallbacks: dict[str, int] = defaultdict(int)
    for row in raw["fallbacks"]:
        fallbacks[row["task_type"]][row["reason"]] = row["n"]
        all_fallbacks[row["reason"]] += row["n"]
    for row in raw["counts"]:
        per_type[row["task_type"]][row["status"]] = row["n"]
        overall[row["status"]] += row["n"]
    by_type = []
    for task_type in TaskType:
        counts = per_type.get(task_type.value, {})
        if not counts:
            continue
        d = raw["durations"].get(task_type.value) or {}
        by_type.append(TypeStats(task_type=task_type, by_status=counts, total=sum(counts.values()),
                                 failure_rate=_failure_rate(counts), p50_ms=d.get("p50"),
                                 p95_ms=d.get("p95"), fallbacks=fallbacks.get(task_type.value, {})))
    return StatsPublic(by_type=by_type, by_status=dict(overall), total=sum(overall.values()),
                       failure_rate=_failure_rate(overall), fallbacks=dict(all_fallbacks))
