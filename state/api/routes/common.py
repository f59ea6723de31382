"""Helpers shared by the resource routers."""

from __future__ import annotations

import uuid
from typing import Any

from schemas.enums import ErrorCode, TaskStatus
from state.api.problems import PROBLEM_MEDIA_TYPE, ApiProblem, Problem
from state.retry import decide


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


def finished(row: dict) -> bool:
    """True once no further status event is expected for the task."""
    status = TaskStatus(row["status"])
    if status is not TaskStatus.FAILED:
        return status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED)
    try:
        return not decide(ErrorCode(row["error_code"]), row["attempt"]).retry
    except (ValueError, TypeError):
        return True
