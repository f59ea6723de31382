"""The closed vocabularies of the contract: task types, statuses, error codes.

Values are exactly the seed documents' names; the Avro enums in ``schemas/avro`` use the same
symbols (a test checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

from pydantic import BeforeValidator


class TaskType(str, Enum):
    GENERATION = "GENERATION"
    EDITING = "EDITING"
    REFINE = "REFINE"
    VIDEO_GENERATION = "VIDEO_GENERATION"
    BACKGROUND_FIX = "BACKGROUND_FIX"
    FACE_ENHANCER = "FACE_ENHANCER"
    IMAGE_ADJUSTER = "IMAGE_ADJUSTER"
    DETAIL_ENHANCER = "DETAIL_ENHANCER"
    BACKGROUND_REMOVE = "BACKGROUND_REMOVE"
    LLM_INTERACTION = "LLM_INTERACTION"

    @property
    def slug(self) -> str:
        """Lower-case name used in topic names and the CLI (``video_generation``)."""
        return self.value.lower()

    @classmethod
    def parse(cls, name: str) -> TaskType:
        """Accept ``GENERATION``, ``generation`` or ``video-generation``; raise ValueError otherwise."""
        key = name.strip().upper().replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(t.slug for t in cls)
            raise ValueError(f"unknown task type {name!r}; known types: {known}") from None


class TaskStatus(str, Enum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ErrorCode(str, Enum):
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    INVALID_INPUT = "INVALID_INPUT"
    CONTENT_POLICY = "CONTENT_POLICY"
    STORAGE_ERROR = "STORAGE_ERROR"

    @property
    def retryable(self) -> bool:
        """The seed's "Retry" column."""
        return self in RETRYABLE_ERRORS


RETRYABLE_ERRORS = frozenset(
    {ErrorCode.PROVIDER_TIMEOUT, ErrorCode.PROVIDER_ERROR, ErrorCode.STORAGE_ERROR}
)


class GenerationType(str, Enum):
    BASE = "BASE"
    AGENTIC = "AGENTIC"


class GenerationStrategy(str, Enum):
    GENERATE = "GENERATE"
    EDITING = "EDITING"
    REFINE = "REFINE"
    VIDEO = "VIDEO"
    BACKGROUND_FIXING = "BACKGROUND_FIXING"
    IMAGE_ADJUSTING = "IMAGE_ADJUSTING"
    FACE_FIXING = "FACE_FIXING"


class EvaluationDecision(str, Enum):
    ACCEPT = "ACCEPT"
    RETRY = "RETRY"
    ACCEPT_BEST = "ACCEPT_BEST"


def _task_type_keys(value: Any) -> Any:
    """A mapping's keys as task types; slugs accepted (``{"video_generation": 2100}``)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, TaskType) else TaskType.parse(str(k)): v for k, v in value.items()}
    return value


PerTaskType = Annotated[dict[TaskType, float], BeforeValidator(_task_type_keys)]
"""A setting per task type (from the environment as JSON with slug keys)."""
