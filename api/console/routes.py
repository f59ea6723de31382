"""The console's pages. Each one calls the REST API's own route functions (``read_task``,
``list_tasks_route``, ``cancel_task``, ``read_generation``, the monitoring routes...) with the
signed-in caller, so a page shows exactly what the API answers that key, tenant scoping
included; live parts follow the API's event streams (``stream_events``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from api.console.auth import check_csrf, session_caller
from api.console.data import OutputRefused, media_type, read_output, result_urls
from api.console.pages import ConsoleRoute, read_form, render
from api.models.generations import GenerationListQuery
from api.models.tasks import TaskListQuery, TaskSubmit
from api.problems import ApiProblem
from api.routes import generations as gen_routes
from api.routes import monitoring as mon_routes
from api.routes import overview as overview_routes
from api.routes import tasks as task_routes
from api.routes.common import finished, task_uuid
from api.routes.events import SSE_MEDIA_TYPE, stream_events
from projection.db.apikeys import Caller
from projection.db.queries import events_after, get_task
from schemas.enums import TaskStatus, TaskType

router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)
_SUBMIT = TypeAdapter(TaskSubmit)
_PAGE_SIZE = 25
# How long "Retry as a new task" waits for the projector to show the new task before redirecting.
_PROJECTED_WAIT_S = 10.0
# The overview stream ends after this long and the browser's EventSource reconnects (after the
# `retry:` delay): an open tab never holds the server's graceful shutdown for longer.
_STREAM_LIFETIME_S = 60.0


def _app(request: Request) -> Any:
    return request.app.state


# --------------------------------------------------------------------------- overview


async def _overview(request: Request, caller: Caller, fleet: dict[str, Any] | None) -> dict[str, Any]:
    async with _app(request).pool.connection() as conn:
        figures = await overview_routes.overview(caller, conn)  # GET /monitoring/overview
    per_type = {t.task_type.value: {
        "queued": t.queued, "running": t.running, "completed": t.completed_last_hour,
        "failed": t.failed_last_hour, "p50": t.p50_ms, "p95": t.p95_ms} for t in figures.types}
    running = {r.worker_id: {"task_id": r.task_id, "task_type": r.task_type.value}
               for r in figures.running}
    types = []
    backlog = (fleet or {}).get("backlog", {})
    for t in TaskType:
        row = per_type.get(t.value, {})
        if row or backlog.get(t.value):
            types.append({"task_type": t.value, "backlog": backlog.get(t.value), **row})
    workers = None
    if fleet is not None:
        workers = [{**w, "current": running.get(w["client_id"])} for w in fleet["workers"]]
    return {"tenant": caller.tenant_id, "operator": caller.operator, "scope": figures.scope,
            "types": types, "workers": workers, "at": time.strftime("%H:%M:%S")}


async def _fleet(request: Request, caller: Caller) -> dict[str, Any] | None:
    """Operators: the backlog per type and the live workers, from the monitoring routes."""
    if not caller.operator:
        return None
    state = _app(request)
    try:
        async with state.pool.connection() as conn:
            queues = await mon_routes.queues(caller, conn, state.monitor)
        groups = await mon_routes.workers(caller, state.monitor)
    except ApiProblem:  # Kafka did not answer: show the database's figures, no fleet
        return None
    members = [{"client_id": m.client_id, "host": m.host, "task_type": g.task_type.value}
               for g in groups.groups for m in g.members]
    return {"backlog": {q.task_type.value: q.backlog for q in queues.queues}, "workers": members}


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    caller, session = await session_caller(request)
    data = await _overview(request, caller, await _fleet(request, caller))
    return render(request, "overview.html", {"caller": caller, "csrf": session.csrf,
                                             "data": data, "page": "overview"})


@router.get("/overview/stream")
async def overview_stream(request: Request) -> StreamingResponse:
    """The overview's figures as SSE (``event: overview``), sent whenever they change."""
    caller, _ = await session_caller(request)
    state = _app(request)

    async def frames() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        last, fleet, fleet_at = None, None, 0.0
        ends_at = time.monotonic() + _STREAM_LIFETIME_S
        while time.monotonic() < ends_at and not await request.is_disconnected():
            if caller.operator and time.monotonic() - fleet_at >= state.console.settings.kafka_refresh_s:
                fleet, fleet_at = await _fleet(request, caller), time.monotonic()
            data = await _overview(request, caller, fleet)
            body = json.dumps({k: v for k, v in data.items() if k != "at"}, sort_keys=True)
            if body != last:
                last = body
                yield f"event: overview\ndata: {json.dumps(data)}\n\n"
            await asyncio.sleep(state.settings.sse_poll_s)  # a poll period, not a synchronisation

    return StreamingResponse(frames(), media_type=SSE_MEDIA_TYPE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- tasks


@router.get("/tasks", response_class=HTMLResponse)
async def tasks(request: Request, status: str = "", task_type: str = "", origin_instance: str = "",
                created_after: str = "", created_before: str = "", search: str = "",
                tenant: str = "", page: Annotated[int, Query(ge=1)] = 1) -> Response:
    caller, session = await session_caller(request)
    filters = {"status": status, "task_type": task_type, "origin_instance": origin_instance,
               "created_after": created_after, "created_before": created_before, "search": search,
               # GET /tasks?tenant= is an operator's filter (a tenant key gets 403 from the API).
               "tenant": tenant if caller.operator else ""}
    try:
        query = TaskListQuery(**{k: v for k, v in filters.items() if v}, page=page,
                              page_size=_PAGE_SIZE)
    except ValidationError as exc:
        raise ApiProblem(422, "validation-error", "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])) from None
    async with _app(request).pool.connection() as conn:
        listed = await task_routes.list_tasks_route(query, caller, conn)
    pages = max(1, -(-listed.total // _PAGE_SIZE))
    return render(request, "tasks.html", {
        "caller": caller, "csrf": session.csrf, "page": "tasks", "listed": listed,
        "filters": filters, "pages": pages, "qs": urlencode({k: v for k, v in filters.items() if v}),
        "statuses": [s.value for s in TaskStatus],
        "types": [t.value for t in TaskType]})


def _retryable(task: Any) -> bool | None:
    """Whether another attempt follows the task's error: it waits QUEUED for it (FAILED is
    final); None without an error."""
    if task.error is None:
        return None
    return task.status is TaskStatus.QUEUED


async def _task(request: Request, caller: Caller, task_id: str) -> Any:
    state = _app(request)
    return await task_routes.read_task(task_id, caller, state.pool, state.notifier, state.settings)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(request: Request, task_id: str) -> Response:
    caller, session = await session_caller(request)
    task = await _task(request, caller, task_id)
    own = task.origin.tenant_id == caller.tenant_id
    async with _app(request).pool.connection() as conn:
        events = await events_after(conn, task.task_id, 0)
        # GET /tasks/{id}/webhook-deliveries: the task's own tenant only (an operator's too).
        deliveries = (await overview_routes.task_webhook_deliveries(task.task_id, caller, conn)
                      ).items if own else None
    outputs = [{"n": n, "url": f"/console/tasks/{task.task_id}/output/{n}",
                "kind": _kind(u)} for n, u in enumerate(result_urls(task.result))]
    return render(request, "task.html", {
        "caller": caller, "csrf": session.csrf, "page": "tasks", "task": task, "own": own,
        "events": events, "deliveries": deliveries, "outputs": outputs,
        "retryable": _retryable(task), "finished": finished({
            "status": task.status.value, "error_code": None if task.error is None else task.error.code.value,
            "attempt": task.attempt}),
        "last_seq": events[-1]["seq"] if events else 0})


def _kind(url: str) -> str:
    return media_type(url).split("/")[0]


@router.get("/tasks/{task_id}/events")
async def task_events(request: Request, task_id: str, after: Annotated[int, Query(ge=0)] = 0
                      ) -> StreamingResponse:
    """The task's own event stream (GET /api/v1/tasks/{id}/events), for the cookie session."""
    caller, _ = await session_caller(request)
    task = await _task(request, caller, task_id)
    state = _app(request)
    return StreamingResponse(
        stream_events(state.pool, state.notifier, state.settings, task.task_id,
                      overview_routes.fleet_scope(caller), after),
        media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _serve(settings: Any, url: str) -> Response:
    try:
        out = read_output(settings, url)
    except OutputRefused:
        raise ApiProblem(404, "output-not-found", "this output cannot be read") from None
    headers = {"Cache-Control": "private, max-age=300"}
    if out.path is not None:
        return FileResponse(out.path, media_type=out.media_type, headers=headers)
    return Response(out.body, media_type=out.media_type, headers=headers)


@router.get("/tasks/{task_id}/output/{n}")
async def task_output(request: Request, task_id: str, n: int) -> Response:
    """Output ``n`` of the caller's task's result, read from the results store (never a redirect
    to a storage path)."""
    caller, _ = await session_caller(request)
    task = await _task(request, caller, task_id)
    urls = result_urls(task.result)
    if not 0 <= n < len(urls):
        raise ApiProblem(404, "output-not-found", f"task {task.task_id} has no output {n}")
    return await run_in_threadpool(_serve, _app(request).console.settings, urls[n])


async def _form_csrf(request: Request) -> Caller:
    caller, session = await session_caller(request)
    if not check_csrf(session, (await read_form(request)).get("csrf")):
        raise ApiProblem(403, "csrf", "the form is stale; reload the page and try again")
    return caller


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: str) -> Response:
    caller = await _form_csrf(request)
    state = _app(request)
    async with state.pool.connection() as conn:
        await task_routes.cancel_task(task_id, caller, conn, state.gateway, state.metrics)
    return RedirectResponse(f"/console/tasks/{task_uuid(task_id)}", status_code=303)


@router.post("/tasks/{task_id}/retry")
async def retry_as_new(request: Request, task_id: str) -> Response:
    """Submit a new task with the same type and parameters (POST /api/v1/tasks)."""
    caller = await _form_csrf(request)
    task = await _task(request, caller, task_id)
    if task.origin.tenant_id != caller.tenant_id:  # an operator reads the fleet, acts on its own
        raise ApiProblem(403, "not-own-task", "only the task's own tenant can retry it")
    if task.params is None:
        raise ApiProblem(409, "no-params", "the task's parameters are not known yet")
    body = _SUBMIT.validate_python({**task.params, "task_type": task.task_type.value,
                                    "webhook_url": task.webhook_url})
    state = _app(request)
    accepted = await task_routes.submit_task(body, caller, state.pool, state.gateway, state.metrics,
                                             Response())
    # The broker has the task; the read model gets it a moment later (the projector). Redirect
    # once the new task's page can show it, rather than to a 404 the user would have to reload.
    await _until_projected(request, caller, accepted.task_id)
    return RedirectResponse(f"/console/tasks/{accepted.task_id}", status_code=303)


async def _until_projected(request: Request, caller: Caller, task_id: str) -> None:
    state = _app(request)
    scope = overview_routes.fleet_scope(caller)

    async def read() -> dict | None:
        async with state.pool.connection() as conn:
            return await get_task(conn, task_id, scope)

    await state.notifier.long_poll(task_id, read, lambda _row: True, _PROJECTED_WAIT_S,
                                   state.settings.sse_poll_s)


# --------------------------------------------------------------------------- generations


@router.get("/generations", response_class=HTMLResponse)
async def generations(request: Request, page: Annotated[int, Query(ge=1)] = 1) -> Response:
    caller, session = await session_caller(request)
    async with _app(request).pool.connection() as conn:
        listed = await gen_routes.list_generations_route(
            GenerationListQuery(page=page, page_size=_PAGE_SIZE), caller, conn)
    return render(request, "generations.html", {
        "caller": caller, "csrf": session.csrf, "page": "generations", "listed": listed,
        "pages": max(1, -(-listed.total // _PAGE_SIZE))})


async def _generation(request: Request, caller: Caller, generation_id: str) -> Any:
    try:
        gid = uuid.UUID(generation_id)
    except ValueError:
        raise ApiProblem(404, "generation-not-found", f"no generation {generation_id[:64]!r}") from None
    state = _app(request)
    return await gen_routes.read_generation(gid, caller, state.pool, state.notifier, state.settings)


@router.get("/generations/{generation_id}", response_class=HTMLResponse)
async def generation_page(request: Request, generation_id: str) -> Response:
    caller, session = await session_caller(request)
    gen = await _generation(request, caller, generation_id)
    return render(request, "generation.html", {"caller": caller, "csrf": session.csrf,
                                               "page": "generations", "gen": gen,
                                               "result_urls": result_urls})


@router.get("/generations/{generation_id}/tasks/{task_id}/output")
async def generation_output(request: Request, generation_id: str, task_id: str) -> Response:
    """The image of one of the generation's tasks (an AGENTIC attempt, a prediction), as the
    generation's record holds it."""
    caller, _ = await session_caller(request)
    gen = await _generation(request, caller, generation_id)
    results: dict[str, Any] = {}
    for p in gen.predictions:
        if p.task_id and p.result:
            results[p.task_id] = p.result
        for a in (p.shot.attempts if p.shot else []):
            if a.result:
                results[a.task_id] = a.result
    urls = result_urls(results.get(task_id))
    if not urls:
        raise ApiProblem(404, "output-not-found", f"generation {gen.generation_id} has no output "
                         f"of task {task_id[:64]!r}")
    return await run_in_threadpool(_serve, _app(request).console.settings, urls[0])
