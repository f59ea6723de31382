"""/generations: start a generation of any strategy, read one, list them, cancel one.

POST resolves the catalog ids (``PostgresCatalog`` on the API's database), plans the generation
(``plan_generation``: pure, so a bad request or an unknown id is refused before anything is
sent), produces the ``GenerationRequested`` record to the generations topic and answers 202 once
the broker has it. The processors' orchestrator starts the generation from that record; its
progress comes back through the projected generations-state topic (GET). POST .../cancel
produces a ``GenerationCancelRequested`` record the same way; the orchestrator cancels the
predictions not yet ended and asks the workers to stop their tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, DbDep, GatewayDep, MetricsDep, NotifierDep, PoolDep, SettingsDep
from api.models.generations import (
    STRATEGY_ROUTES,
    SUBMIT_MODELS,
    GenerationAccepted,
    GenerationCancel,
    GenerationCancelAccepted,
    GenerationLinks,
    GenerationListQuery,
    GenerationPublic,
    GenerationsPublic,
    GenerationSummary,
    generation_path,
)
from api.models.tasks import API_PREFIX, task_path
from api.problems import ApiProblem
from api.routes.common import (
    WaitQuery,
    idempotency_header,
    missing,
    problem_responses,
    read_row,
    row_or_404,
    send,
)
from api.routing import ApiRoute
from generations.catalog import CatalogError, UnknownCatalogEntry
from generations.plan import GenerationCancelRequested, GenerationPlan, GenerationRequested, plan_generation
from generations.record import GenerationStatus
from generations.requests import parse_request
from producers.task_ids import keyed_uuid
from projection.db.catalog import PostgresCatalog
from projection.db.generation_projection import GenerationFilter, get_generation, list_generations
from schemas.enums import GenerationStrategy

log = logging.getLogger("api.generations")

router = APIRouter(prefix="/generations", tags=["generations"], route_class=ApiRoute)

# Fixed namespace of idempotency-derived generations; changing it would break replays.
_IDEMPOTENCY_NS = uuid.UUID("5d0f3a7e-8c1b-4f2a-9e6d-3b7c1a9f0e42")
# A per-key advisory lock (its own hash seed), held while one request of that key is answered.
_KEY_LOCK_SEED = 0x67656E6B

IdempotencyKey = Annotated[str | None, idempotency_header("generation: a repeat sends nothing")]


def generation_seed(tenant_id: str, idempotency_key: str, secret: bytes | None = None) -> uuid.UUID:
    """The seed of the plan's random draws, of (tenant, key) keyed with the deployment's
    ``IDEMPOTENCY_SECRET`` (producers/task_ids.py), so the generation id (and every seed and task
    id) is the same for a repeat of the same key, and not computable by another tenant."""
    return keyed_uuid(_IDEMPOTENCY_NS, f"{tenant_id}\x1f{idempotency_key}", secret)


def _fingerprint(strategy: GenerationStrategy, body: BaseModel) -> str:
    document = {"strategy": strategy.value, "body": body.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _plan(strategy: GenerationStrategy, body: BaseModel, database_url: str,
          rng: random.Random) -> GenerationPlan:
    """Plan the request (blocking: the catalog is read through psycopg); problems for what the
    caller can fix, 503 when the catalog cannot be read."""
    try:
        request = parse_request({**body.model_dump(exclude={"webhook_url"}), "strategy": strategy})
        return plan_generation(request, PostgresCatalog(database_url), rng)
    except UnknownCatalogEntry as exc:
        names = ", ".join(f"{kind.value} {entry_id}" for kind, entry_id in exc.missing)
        raise ApiProblem(422, "unknown-catalog-entry",
                         f"unknown catalog entr{'y' if len(exc.missing) == 1 else 'ies'}: {names};"
                         f" add it with POST {API_PREFIX}/catalog/{exc.missing[0][0].table}"
                         " or fix the id") from None
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                          for e in exc.errors()[:5])
        raise ApiProblem(422, "validation-error", f"the request is not valid: {where}") from None
    except CatalogError:
        log.exception("the catalog could not be read")
        raise ApiProblem(503, "catalog-unavailable", "the catalog could not be read; retry",
                         headers={"Retry-After": "1"}) from None


def _accepted_of(plan: GenerationPlan) -> dict[str, Any]:
    if plan.prompt_step is not None:
        task_ids = [t.task_id for t in plan.prompt_step.waiting]
        prompt_task_id: str | None = plan.prompt_step.task.task_id
    else:
        task_ids, prompt_task_id = [t.task_id for t in plan.tasks], None
    return {"generation_id": plan.generation_id, "strategy": plan.request.strategy.value,
            "generation_type": plan.request.generation_type.value, "task_ids": task_ids,
            "prompt_task_id": prompt_task_id,
            "follow_up_task_ids": [f.task_id for f in plan.follow_ups]}


def _answer(response: Response, accepted: dict[str, Any], *, replay: bool) -> GenerationAccepted:
    gid = accepted["generation_id"]
    tasks = [*([accepted["prompt_task_id"]] if accepted["prompt_task_id"] else []),
             *accepted["task_ids"]]
    links = GenerationLinks(self_=generation_path(gid), tasks=[task_path(t) for t in tasks])
    response.headers["Location"] = links.self_
    return GenerationAccepted(**accepted, idempotent_replay=replay, links=links)


async def _submit(strategy: GenerationStrategy, body: BaseModel, caller: Any, db: Any,
                  producer: Any, settings: Any, metrics: Any, response: Response,
                  idempotency_key: str | None) -> GenerationAccepted:
    webhook_url = getattr(body, "webhook_url", None)

    async def plan_and_send(rng: random.Random) -> dict[str, Any]:
        plan = await run_in_threadpool(_plan, strategy, body, settings.database_url, rng)
        requested = GenerationRequested(
            plan=plan, requested_at=datetime.now(UTC).isoformat(),
            origin_instance=settings.origin_instance, origin_zone=settings.origin_zone,
            origin_tenant_id=caller.tenant_id, webhook_url=webhook_url)
        await send(producer.submit_generation, requested, too_large="task-too-large", unsent=(
            "the broker did not acknowledge the generation, so it was not started;"
            " retry (with the same Idempotency-Key)"))
        metrics.generation_submits.labels(strategy.value, plan.request.generation_type.value).inc()
        return _accepted_of(plan)

    if idempotency_key is None:
        return _answer(response, await plan_and_send(random.Random()), replay=False)
    fingerprint = _fingerprint(strategy, body)
    # One request per (tenant, key) at a time: a concurrent repeat waits here, then replays.
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))",
                         (f"{caller.tenant_id}\x1f{idempotency_key}", _KEY_LOCK_SEED))
        cur = await db.execute(
            "SELECT fingerprint, accepted FROM generation_requests"
            " WHERE origin_tenant_id = %s AND idempotency_key = %s", (caller.tenant_id, idempotency_key))
        existing = await cur.fetchone()
        if existing is not None:
            if existing["fingerprint"] != fingerprint:
                raise ApiProblem(409, "idempotency-key-reused",
                                 "this Idempotency-Key was used for a different generation; use a new key")
            return _answer(response, existing["accepted"], replay=True)
        seed = generation_seed(caller.tenant_id, idempotency_key, producer.idempotency_secret)
        accepted = await plan_and_send(random.Random(seed.int))
        await db.execute(
            "INSERT INTO generation_requests (origin_tenant_id, idempotency_key, generation_id,"
            " fingerprint, accepted) VALUES (%s, %s, %s, %s, %s)",
            (caller.tenant_id, idempotency_key, accepted["generation_id"], fingerprint, Jsonb(accepted)))
    return _answer(response, accepted, replay=False)


def _route(strategy: GenerationStrategy, suffix: str, request_model: type[BaseModel]) -> None:
    model = SUBMIT_MODELS[strategy]

    async def submit(body: BaseModel, caller: CallerDep, db: DbDep,
                     producer: GatewayDep, settings: SettingsDep, metrics: MetricsDep, response: Response,
                     idempotency_key: IdempotencyKey = None) -> GenerationAccepted:
        return await _submit(strategy, body, caller, db, producer, settings, metrics, response,
                             idempotency_key)

    # The body's model is this closure's: give FastAPI the object, not the postponed name.
    submit.__annotations__["body"] = Annotated[model, Body()]  # type: ignore[valid-type]
    submit.__name__ = f"submit_{strategy.value.lower()}_generation"
    submit.__doc__ = (f"Start a {strategy.value} generation (body: `{request_model.__name__}` "
                      "without `strategy`); 202 once the broker has the GenerationRequested record.")
    router.add_api_route(suffix, submit, methods=["POST"], status_code=202,
                         response_model=GenerationAccepted, name=submit.__name__,
                         summary=f"Start a {strategy.value} generation",
                         responses=problem_responses(400, 401, 409, 413, 422, 503))


for _strategy, (_suffix, _model) in STRATEGY_ROUTES.items():
    _route(_strategy, _suffix, _model)


@router.get("", response_model=GenerationsPublic, responses=problem_responses(401, 422))
async def list_generations_route(query: Annotated[GenerationListQuery, Query()], caller: CallerDep,
                                 db: DbDep) -> GenerationsPublic:
    """The caller's tenant's generations, newest first, filtered and paged."""
    f = GenerationFilter(status=query.status,
                         strategy=None if query.strategy is None else query.strategy.value,
                         generation_type=None if query.generation_type is None else query.generation_type.value,
                         created_after=query.created_after, created_before=query.created_before)
    rows, total = await list_generations(db, caller.tenant_id, f, page=query.page,
                                         page_size=query.page_size, sort_order=query.sort_order)
    return GenerationsPublic.of(map(GenerationSummary.from_row, rows), total, query)


# ``:uuid`` in the path: /generations/edit and its siblings are not ids, so a GET there is a 405
# naming POST (not "no generation 'edit'"), and any other non-UUID is no route (404).
@router.get("/{generation_id:uuid}", response_model=GenerationPublic,
            responses=problem_responses(401, 404, 422))
async def read_generation(generation_id: uuid.UUID, caller: CallerDep, pool: PoolDep,
                          notifier: NotifierDep, settings: SettingsDep,
                          wait: WaitQuery = 0.0) -> GenerationPublic:
    """Status, predictions (task ids, status, results) and, for AGENTIC, every attempt with its
    score, reasons and decision, and the accepted one; with ``wait``, a long poll that answers
    when the generation has ended (COMPLETED, FAILED or CANCELLED)."""
    gid = str(generation_id)
    row = await read_row(get_generation, gid, caller.tenant_id, pool=pool, notifier=notifier,
                         settings=settings, wait=wait, ended=_generation_ended,
                         may_end=_generation_status_ended)
    if row is None:
        raise missing("generation", gid, caller.tenant_id)
    return GenerationPublic.from_row(row)


def _generation_ended(row: dict) -> bool:
    return _generation_status_ended(row["status"])


def _generation_status_ended(status: str) -> bool:
    return status != GenerationStatus.RUNNING.value


@router.post("/{generation_id:uuid}/cancel", status_code=202, response_model=GenerationCancelAccepted,
             responses=problem_responses(400, 401, 404, 409, 422, 503))
async def cancel_generation(generation_id: uuid.UUID, caller: CallerDep, db: DbDep, producer: GatewayDep,
                            metrics: MetricsDep,
                            body: Annotated[GenerationCancel | None, Body()] = None) -> GenerationCancelAccepted:
    """Cancel a running generation: its predictions not yet ended are CANCELLED and their running
    tasks asked to stop (a prediction that completed keeps its result). 202 once the broker has
    the GenerationCancelRequested record; 409 for a generation that already ended."""
    gid = str(generation_id)
    row = await row_or_404(get_generation, db, "generation", gid, caller)
    if row["status"] != "RUNNING":
        raise ApiProblem(409, "generation-finished",
                         f"generation {gid} already ended {row['status']}; there is nothing to cancel")
    requested = GenerationCancelRequested(
        generation_id=gid, requested_at=datetime.now(UTC).isoformat(),
        reason=body.reason if body is not None else None, requested_by=f"api-key:{caller.key_id}")
    await send(producer.cancel_generation, requested, too_large=None,
               unsent="the cancel could not be delivered; retry")
    metrics.cancels.inc()
    return GenerationCancelAccepted(generation_id=gid, links=GenerationPublic.from_row(row).links)
