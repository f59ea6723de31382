"""Helpers shared by the resource routers."""

from __future__ import annotations

import uuid
from typing import Any

from state.api.problems import PROBLEM_MEDIA_TYPE, ApiProblem, Problem


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: these statuses answer with a problem document."""
    return {s: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for s in statuses}


def task_uuid(task_id: str) -> str:
    """The canonical text of a task id; 404 for anything that is not a UUID (no such task)."""
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise ApiProblem(404, "task-not-found", f"no task {task_id[:64]!r}") from None


def not_found(task_id: str) -> ApiProblem:
    return ApiProblem(404, "task-not-found", f"no task {task_id}")
