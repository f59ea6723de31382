"""Typed task failures: each maps onto one seed error code, which decides retries."""

from __future__ import annotations

from schemas.enums import ErrorCode
from schemas.errors import ComputeError


class TaskFailure(ComputeError):
    """A task could not be completed. ``code`` is the seed error code the task ends with."""

    code: ErrorCode = ErrorCode.PROVIDER_ERROR


class InvalidInput(TaskFailure):
    """The task's parameters or input files are unusable (unreachable or private URL, not an
    image, too large, a mask of the wrong size...). Not retried: fix the task and resubmit."""

    code = ErrorCode.INVALID_INPUT


class ProviderError(TaskFailure):
    """The model or library failed while running the task. Retried with backoff."""

    code = ErrorCode.PROVIDER_ERROR


class ProviderTimeout(TaskFailure):
    """The task ran past its time limit (``task_timeout_s`` for its type). Retried with backoff."""

    code = ErrorCode.PROVIDER_TIMEOUT


class StorageFailure(TaskFailure):
    """The result could not be written to the output store (S3 or the results folder). Retried;
    check the bucket, credentials and free space."""

    code = ErrorCode.STORAGE_ERROR


class ContentPolicyViolation(TaskFailure):
    """The content-policy hook refused the prompt or the result. Not retried."""

    code = ErrorCode.CONTENT_POLICY


class TaskCancelled(ComputeError):
    """The task was cancelled by a user while it ran; its output is discarded. Not a failure."""
