"""GET /monitoring/overview (OverviewPublic) and GET /tasks/{id}/webhook-deliveries
(WebhookDeliveriesPublic)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from schemas.enums import TaskType


class TypeOverview(BaseModel):
    task_type: TaskType
    queued: int = Field(description="PENDING or QUEUED now")
    running: int = Field(description="PROCESSING now")
    completed_last_hour: int = Field(description="COMPLETED in the last hour")
    failed_last_hour: int = Field(description="FAILED (last status) in the last hour")
    p50_ms: int | None = Field(description="median duration of the last hour's completed tasks")
    p95_ms: int | None = Field(description="95th percentile duration, the same tasks")


class RunningTask(BaseModel):
    worker_id: str = Field(description="the worker's client id (GET /monitoring/workers)")
    task_id: str
    task_type: TaskType
    tenant_id: str | None
    started_at: datetime | None


class OverviewPublic(BaseModel):
    scope: Literal["fleet", "tenant"] = Field(
        description="fleet: every tenant's tasks (operator keys); tenant: the key's own tenant's")
    tenant_id: str | None = Field(description="the tenant the figures are of; null for the fleet")
    types: list[TypeOverview] = Field(description="each task type that has any task, by name")
    running: list[RunningTask] = Field(
        description="the tasks PROCESSING now, with the worker running each (in scope)")


class WebhookDeliveryPublic(BaseModel):
    event_id: str = Field(description="the status event delivered (X-Compute-Event-Id)")
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class WebhookDeliveriesPublic(BaseModel):
    task_id: str
    items: list[WebhookDeliveryPublic] = Field(description="oldest first, at most 100")
