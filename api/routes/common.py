"""Helpers shared by the resource routers."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Path, Query

from api.problems import PROBLEM_MEDIA_TYPE, ApiProblem, Problem
from api.settings import ApiSettings
from schemas.enums import TERMINAL_STATUSES
from schemas.records import UUID_PATTERN


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: these statuses answer with a problem document."""
    return {s: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for s in statuses}


# An id in a path: a UUID's text, as the document says (any other text is a 404: no such thing).
UuidPath = Annotated[str, Path(json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN})]


def task_uuid(task_id: str) -> str:
    """The canonical text of a task id; 404 for anything that is not a UUID (no such task)."""
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise ApiProblem(404, "task-not-found", f"no task {task_id[:64]!r}") from None


def not_found(task_id: str, tenant_id: str) -> ApiProblem:
    """The caller's own tenant is named (a key knows its tenant): "not found" then reads as "not
    this key's", the usual slip being a task submitted under another tenant or none. The answer
    is the same for an unknown id and for another tenant's."""
    return ApiProblem(404, "task-not-found", f"no task {task_id} for tenant {tenant_id}")


def finished(row: dict) -> bool:
    """True once no further status event is expected for the task: its status is terminal.
    FAILED is final (a retry is QUEUED for the next attempt, state/lifecycle.py), so this needs
    no retry policy and agrees with whatever policy the workers and processors are configured
    with."""
    return may_have_finished(row["status"])


_FINISHED = frozenset(s.value for s in TERMINAL_STATUSES)


def may_have_finished(status: str) -> bool:
    """Whether a task with this status has :func:`finished` (the status alone tells; kept as the
    long poll's cheap check of a notification)."""
    return status in _FINISHED


WaitQuery = Annotated[float, Query(ge=0, description=(
    "Seconds to wait for it to end before answering (a long poll): the answer comes as soon as "
    "it has ended, else with its state at the deadline. One accepted a moment ago but not yet "
    "readable is waited for too (404 only if it is still unknown at the deadline). At most the "
    "server's COMPUTE_API_MAX_WAIT_S (60 by default)."))]


def check_wait(wait: float, settings: ApiSettings) -> None:
    """422 for a ``wait`` longer than the server allows."""
    if wait > settings.max_wait_s:
        raise ApiProblem(422, "validation-error", f"wait: at most {settings.max_wait_s:g} seconds")
