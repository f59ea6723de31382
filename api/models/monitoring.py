"""The monitoring resource: QueuesPublic, WorkersPublic, StatsPublic."""

from __future__ import annotations

from pydantic import BaseModel, Field

from schemas.enums import TaskType


class QueuePublic(BaseModel):
    task_type: TaskType
    topic: str
    group_id: str
    backlog: int = Field(description="records the type's worker group has not committed yet")
    partitions: int
    oldest_waiting_s: float | None = Field(
        description="age of the oldest QUEUED task of this type, any tenant (read model)")


class QueuesPublic(BaseModel):
    queues: list[QueuePublic]


class WorkerMember(BaseModel):
    client_id: str
    host: str
    member_id: str


class WorkerGroupPublic(BaseModel):
    task_type: TaskType
    group_id: str
    state: str
    members: list[WorkerMember]


class WorkersPublic(BaseModel):
    groups: list[WorkerGroupPublic]
    total_members: int


class TypeStats(BaseModel):
    task_type: TaskType
    by_status: dict[str, int]
    total: int
    failure_rate: float | None = Field(description="FAILED / (COMPLETED + FAILED); null if none ended")
    p50_ms: float | None
    p95_ms: float | None
    fallbacks: dict[str, int] = Field(
        default_factory=dict, description="COMPLETED tasks a fallback provider produced, by reason: "
        "capability (over the primary's limits) or the primary's error (docs/WORKERS.md)")


class StatsPublic(BaseModel):
    by_type: list[TypeStats]
    by_status: dict[str, int]
    total: int
    failure_rate: float | None
    fallbacks: dict[str, int] = Field(default_factory=dict, description="The by_type fallbacks, summed")
