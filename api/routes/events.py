"""GET /tasks/{id}/events: the task's status changes and progress as server-sent events.

Each event is ``id: <seq>`` (1, 2, 3... per task, the order the projector stored them),
``event: status``, ``data: <TaskEventPublic JSON>``. A client resumes with ``Last-Event-ID`` (or
``?after=``) and gets exactly the events after that one: ids come from the table, not from the
connection, so nothing is skipped or repeated. When the task has ended (COMPLETED, FAILED or
CANCELLED: all final; a retry is QUEUED for the next attempt) the stream sends ``event: end`` and
closes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, NotifierDep, PoolDep, SettingsDep
from api.models.tasks import TaskEventPublic
from api.notifier import EventNotifier
from api.problems import ApiProblem
from api.routes.common import UuidPath, finished, fleet_scope, problem_responses, row_or_404, task_uuid
from api.routing import ApiRoute
from api.settings import ApiSettings
from projection.db.pool import AsyncPool
from projection.db.queries import events_after, get_task

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=ApiRoute)

SSE_MEDIA_TYPE = "text/event-stream"
# An event id this stream sends: a task_events seq (a bigint, so at most 18 digits here).
LAST_EVENT_ID = re.compile(r"^[0-9]{1,18}$")
# Client reconnection delay suggested to EventSource (milliseconds).
_RETRY_MS = 2000


def _frame(task_id: str, row: dict) -> str:
    event = TaskEventPublic.from_row(task_id, row)
    return f"id: {event.seq}\nevent: status\ndata: {event.model_dump_json()}\n\n"


async def stream_events(pool: AsyncPool, notifier: EventNotifier, settings: ApiSettings,
                        task_id: str, tenant_id: str | None, after: int) -> AsyncIterator[str]:
    yield f"retry: {_RETRY_MS}\n\n"
    idle_s = 0.0
    with notifier.subscribe(task_id) as wake:
        while True:
            wake.clear()
            async with pool.connection() as conn:
                # The row first: its event_seq counts the events committed with it.
                row = await get_task(conn, task_id, tenant_id)
                rows = [] if row is None or row["event_seq"] <= after else await events_after(
                    conn, task_id, after)
            if row is None:
                return
            for event_row in rows:
                yield _frame(task_id, event_row)
                after = event_row["seq"]
            if rows:
                idle_s = 0.0
                continue
            if finished(row):
                end = {"task_id": task_id, "status": row["status"], "last_event_id": after}
                yield f"event: end\ndata: {json.dumps(end)}\n\n"
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=settings.sse_poll_s)
            except TimeoutError:
                idle_s += settings.sse_poll_s
                if idle_s >= settings.sse_keepalive_s:
                    idle_s = 0.0
                    yield ": keep-alive\n\n"


@router.get("/{task_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {SSE_MEDIA_TYPE: {"schema": {"type": "string"}}},
                             "description": "text/event-stream of TaskEventPublic"},
                       **problem_responses(400, 401, 404)})
async def follow_task(
    task_id: UuidPath, caller: CallerDep, pool: PoolDep, notifier: NotifierDep, settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", json_schema_extra={
        "pattern": LAST_EVENT_ID.pattern,
        "description": "the id of the last event received: resume after it (400 otherwise)"})] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
) -> StreamingResponse:
    """Follow a task live: every status change and progress report, resumable. An operator key
    follows any tenant's task."""
    tid = task_uuid(task_id)
    start = after or 0
    if last_event_id is not None:
        if not LAST_EVENT_ID.fullmatch(last_event_id):
            raise ApiProblem(400, "bad-last-event-id",
                             "Last-Event-ID must be the id of an event this stream sent")
        start = max(start, int(last_event_id))
    scope = fleet_scope(caller)  # an operator key follows any tenant's task
    async with pool.connection() as conn:
        await row_or_404(get_task, conn, "task", tid, caller, any_tenant=True)
    return StreamingResponse(
        stream_events(pool, notifier, settings, tid, scope, start),
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
