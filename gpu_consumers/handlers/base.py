"""The contract between the worker runtime and the ten task handlers.

A handler is one module per task type (``gpu_consumers/handlers/<type>.py``) with a class that
reads top to bottom like a diffusers pipeline: check inputs, load (from the warm cache), prepare,
run with progress and cancel checks once per step, encode the output, return a typed result.
It does no Kafka and no storage: the runtime owns those.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gpu_consumers.errors import TaskCancelled
from schemas.enums import TaskType

if TYPE_CHECKING:
    from gpu_consumers.input_scope import TaskInputs
    from gpu_consumers.model_cache import ModelCache


class CancelToken:
    """Set by the runtime when a user cancels the running task (not on shutdown)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise TaskCancelled("cancelled by request")


@dataclass(frozen=True)
class OutputFile:
    """One encoded output (PNG, WebP, MP4, text...)."""

    data: bytes
    content_type: str  # image/png, image/webp, video/mp4, text/plain
    suffix: str  # .png, .webp, .mp4, .txt


@dataclass(frozen=True)
class HandlerResult:
    """What a handler produced. The runtime stores ``outputs`` and adds URLs and timing."""

    outputs: list[OutputFile]
    model: str  # model id or method name, e.g. "tiny-sd" or "opencv-grabcut"
    provider: str  # diffusers | transformers | classical
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    text: str | None = None  # LLM_INTERACTION's answer
    fps: int | None = None
    frame_count: int | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[float], None]  # fraction 0..1; the runtime throttles what it emits


@dataclass
class TaskContext:
    """Everything a handler may use besides its parameters."""

    task_id: str
    attempt: int
    progress: ProgressFn
    cancel: CancelToken
    fetch: TaskInputs  # fetch_image / fetch_bytes, tenant-scoped
    models: ModelCache  # warm pipelines, LoRAs
    device: str = "cpu"
    low_memory: bool = False  # set on the retry after a GPU out-of-memory: tile/slice the VAE


class Handler(Protocol):
    task_type: ClassVar[TaskType]
    providers: ClassVar[tuple[str, ...]]  # the first is the default provider_type

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult: ...
