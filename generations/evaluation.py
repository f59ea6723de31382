"""What an evaluation says about an attempt (:class:`Evaluation`), and what an evaluator may know
besides the pixels (:class:`EvaluationContext`): the values the AGENTIC flow decides on. The
evaluators that produce them are plugins of the processors (``processors/evaluators/``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.enums import TaskType


@dataclass(frozen=True)
class Evaluation:
    """A score in 0..1 (higher is better), why it is not higher, and the raw signals."""

    score: float
    reasons: tuple[str, ...] = ()
    signals: Mapping[str, float] = field(default_factory=dict)
    evaluator: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"an evaluation score lies in 0..1, got {self.score}")
        object.__setattr__(self, "reasons", tuple(self.reasons))


@dataclass(frozen=True)
class EvaluationContext:
    """What an evaluator may know about the attempt besides its pixels."""

    task_type: TaskType = TaskType.GENERATION
    prompt: str | None = None
    generation_id: str | None = None
    shot_id: str | None = None
    attempt: int = 1
    # The result should be a cut-out (BACKGROUND_REMOVE, or an RGBA output asked for): the alpha
    # channel is judged even when it is fully opaque.
    expects_alpha: bool = False
    # The requested output size, when the task asked for one: a result of another aspect ratio
    # was stretched or cropped.
    width: int | None = None
    height: int | None = None
