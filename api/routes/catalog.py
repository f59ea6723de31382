"""/catalog: the subjects, products and styles GENERATE and EDITING requests name by id.

The catalog is global: one set of entries shared by every tenant (its tables have no tenant
column; a LoRA is a deployment's asset, not a tenant's). Any valid API key may read it and add
entries; entries cannot be changed or deleted through the API (``computectl catalog`` and the
database are the operators' tools). Reads and writes go through ``generations.catalog.PostgresCatalog``
on the API's database, the same store the generation planner reads.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, SettingsDep
from api.models.generations import (
    CatalogEntriesPublic,
    CatalogEntryCreate,
    CatalogEntryPublic,
    CatalogKindPath,
)
from api.problems import ApiProblem
from api.routes.common import UuidPath, problem_responses
from api.routing import ApiRoute
from generations.catalog import CatalogEntry, CatalogError, UnknownCatalogEntry
from projection.db.catalog import PostgresCatalog

log = logging.getLogger("api.catalog")

router = APIRouter(prefix="/catalog", tags=["catalog"], route_class=ApiRoute)


def _unavailable(exc: CatalogError) -> ApiProblem:
    log.error("catalog unavailable: %s", exc)
    return ApiProblem(503, "catalog-unavailable", "the catalog could not be read; retry",
                      headers={"Retry-After": "1"})


@router.get("/{kind}", response_model=CatalogEntriesPublic, responses=problem_responses(401, 422, 503))
async def list_entries(kind: CatalogKindPath, caller: CallerDep,
                       settings: SettingsDep) -> CatalogEntriesPublic:
    """Every entry of one kind, oldest first."""
    try:
        entries = await run_in_threadpool(PostgresCatalog(settings.database_url).list, kind.kind)
    except CatalogError as exc:
        raise _unavailable(exc) from None
    return CatalogEntriesPublic(items=[CatalogEntryPublic.of(e) for e in entries], total=len(entries))


@router.post("/{kind}", status_code=201, response_model=CatalogEntryPublic,
             responses=problem_responses(400, 401, 409, 413, 422, 503))
async def add_entry(kind: CatalogKindPath, body: Annotated[CatalogEntryCreate, Body()],
                    caller: CallerDep, settings: SettingsDep, response: Response) -> CatalogEntryPublic:
    """Add an entry; 201 with its id (and a ``Location``); 409 when ``id`` is taken."""
    store = PostgresCatalog(settings.database_url)
    try:
        entry: CatalogEntry = await run_in_threadpool(
            store.add, kind.kind, body.name.strip(), body.lora_ref, body.default_weight, body.id,
            body.reference_urls)
    except CatalogError as exc:
        message = str(exc)
        if "already exists" in message:
            raise ApiProblem(409, "catalog-entry-exists",
                             f"{kind.kind.value} {body.id} already exists") from None
        if message.startswith("invalid "):
            raise ApiProblem(422, "validation-error", message) from None
        raise _unavailable(exc) from None
    log.info("catalog: %s %s added by key %s (tenant %s)", kind.kind.value, entry.id,
             caller.key_id, caller.tenant_id)
    public = CatalogEntryPublic.of(entry)
    response.headers["Location"] = public.links.self_
    return public


@router.get("/{kind}/{entry_id}", response_model=CatalogEntryPublic,
            responses=problem_responses(401, 404, 422, 503))
async def read_entry(kind: CatalogKindPath, entry_id: UuidPath, caller: CallerDep,
                     settings: SettingsDep) -> CatalogEntryPublic:
    """One entry; 404 when there is none (or the id is not a UUID)."""
    try:
        entry = await run_in_threadpool(PostgresCatalog(settings.database_url).get, kind.kind, entry_id)
    except UnknownCatalogEntry:
        raise ApiProblem(404, "catalog-entry-not-found",
                         f"no {kind.kind.value} {entry_id[:64]!r}") from None
    except CatalogError as exc:
        raise _unavailable(exc) from None
    return CatalogEntryPublic.of(entry)
