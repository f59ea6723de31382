"""GET /monitoring/overview and GET /tasks/{id}/webhook-deliveries: what the console shows
beside the task and monitoring routes, for any API client.

The overview is scoped like a task list: an operator key sees the fleet (every tenant's tasks,
and the worker running each), a tenant key its own tenant's tasks (and the worker ids of its own
running tasks only). Webhook deliveries are the task's tenant's only, an operator's included:
a webhook URL may carry its owner's token."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, DbDep
from api.models.overview import (
    OverviewPublic,
    RunningTask,
    TypeOverview,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
)
from api.routes.common import UuidPath, fleet_scope, not_found, problem_responses, task_uuid
from api.routing import ApiRoute
from projection.db.overview import last_hour, running_by_worker, webhook_deliveries
from projection.db.queries import get_task

router = APIRouter(route_class=ApiRoute)


@router.get("/monitoring/overview", tags=["monitoring"], response_model=OverviewPublic,
            responses=problem_responses(401))
async def overview(caller: CallerDep, db: DbDep) -> OverviewPublic:
    """Per task type: queued and running now, completed and failed in the last hour, p50/p95
    duration; the tasks running now with their workers. Operator keys: the fleet; tenant keys:
    their own tasks."""
    scope = fleet_scope(caller)
    types = [TypeOverview(task_type=r["task_type"], queued=r["queued"], running=r["running"],
                          completed_last_hour=r["completed"], failed_last_hour=r["failed"],
                          p50_ms=r["p50"], p95_ms=r["p95"]) for r in await last_hour(db, scope)]
    running = [RunningTask(**r) for r in await running_by_worker(db, scope)]
    return OverviewPublic(scope="fleet" if scope is None else "tenant", tenant_id=scope,
                          types=types, running=running)


@router.get("/tasks/{task_id}/webhook-deliveries", tags=["tasks"],
            response_model=WebhookDeliveriesPublic, responses=problem_responses(401, 404))
async def task_webhook_deliveries(task_id: UuidPath, caller: CallerDep, db: DbDep
                                  ) -> WebhookDeliveriesPublic:
    """The task's webhook deliveries (one per status event), oldest first, with their state,
    attempts and last answer. The task's own tenant only: 404 for any other key."""
    tid = task_uuid(task_id)
    if await get_task(db, tid, caller.tenant_id) is None:
        raise not_found(tid, caller.tenant_id)
    rows = await webhook_deliveries(db, tid)
    return WebhookDeliveriesPublic(task_id=tid, items=[
        WebhookDeliveryPublic(**{k: v for k, v in r.items() if k != "outbox_id"}) for r in rows])
