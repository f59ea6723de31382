"""The AGENTIC quality loop (seed "Generation Types"), as pure functions: no I/O, no clock.

Each prediction of an AGENTIC generation is an :class:`OrchestratedShot`. The processors call
:func:`on_attempt_finished` when an attempt's task ends (COMPLETED with its evaluation, or
FAILED) and carry out the :class:`ShotAction` it returns:

* score ≥ ``min_confidence_score`` → ``ACCEPT`` that attempt's task;
* else, while ``len(attempts) < max_attempts`` → ``RETRY``: submit ``action.params`` as a new
  task with id ``action.task_id`` (deterministic, so a replayed decision resubmits the same task);
* else → ``ACCEPT_BEST``: the completed attempt with the highest score (ties: the earliest);
* no attempt completed at all → ``GIVE_UP`` (the prediction is FAILED).

A FAILED attempt counts as an attempt and is never the best. A task's own retries of retryable
errors (``state/retry.py``: same task id, next envelope attempt) happen below this loop; the shot
sees only the task's final outcome. BASE generations never evaluate and never retry: COMPLETED →
``ACCEPT``, FAILED → ``GIVE_UP``.

Each retry is a genuinely different try for every provider of the task type, steered by the
evaluator's reasons: :func:`generations.steering.adjust` (a new seed; the amounts every provider
reads moved the way the reasons ask, or explored when they name nothing; more denoising at
attempt 3; the prompt revised with the reasons from attempt 2 on). It is given every parameter
set the shot has tried, so no retry repeats one.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, cast

from generations.steering import (
    _KNOBS,
    GUIDANCE_FALLBACK,
    STEPS_FALLBACK,
    PromptReviser,
    adjust,
    derive_seed,
    revise_prompt,
)
from schemas.enums import ErrorCode, EvaluationDecision, GenerationType, TaskStatus, TaskType
from schemas.events import Orchestration
from schemas.task_params import PARAMS_MODELS, TaskParams

__all__ = [
    "ShotAction", "ActionKind", "Completed", "Failed", "OrchestratedShot", "Outcome", "PromptReviser",
    "ShotAttempt", "ShotSettings", "UnknownAttemptError", "adjust", "attempt_task_id",
    "derive_seed", "on_attempt_finished", "revise_prompt", "shot_id_for", "shot_rng_seed",
    # re-exported from generations.steering (callers and tests import them from here)
    "GUIDANCE_FALLBACK", "STEPS_FALLBACK", "_KNOBS",
]

# Fixed namespace of shot and attempt ids; changing it would orphan every stored shot.
_ID_NAMESPACE = uuid.UUID("0b7c2a51-3e9d-4f6a-8c15-2d4e6f8a9b30")


class ActionKind(StrEnum):
    ACCEPT = "ACCEPT"
    RETRY = "RETRY"
    ACCEPT_BEST = "ACCEPT_BEST"
    GIVE_UP = "GIVE_UP"

    @property
    def evaluation_decision(self) -> EvaluationDecision | None:
        """The ``EvaluationRecorded.decision`` symbol; GIVE_UP has none (no score to record)."""
        return None if self is ActionKind.GIVE_UP else EvaluationDecision(self.value)


class UnknownAttemptError(ValueError):
    """An outcome names a task that is no attempt of this shot: the event was routed to the wrong
    shot. Check the task's ``orchestration.shot_id``."""


@dataclass(frozen=True)
class ShotSettings:
    """The AGENTIC configuration (seed defaults)."""

    max_attempts: int = 3
    min_confidence_score: float = 0.7
    evaluation_provider: str = "auto"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.min_confidence_score <= 1.0:
            raise ValueError(f"min_confidence_score must lie in 0..1, got {self.min_confidence_score}")

    @classmethod
    def of(cls, orchestration: Orchestration) -> ShotSettings:
        return cls(orchestration.max_attempts, orchestration.min_confidence_score,
                   orchestration.evaluation_provider)


@dataclass(frozen=True)
class ShotAttempt:
    """One attempt: its task, the parameters it ran with, and how it ended."""

    attempt: int
    task_id: str
    params: TaskParams
    status: TaskStatus = TaskStatus.PENDING  # PENDING until it ends, then COMPLETED or FAILED
    score: float | None = None
    reasons: tuple[str, ...] = ()
    decision: ActionKind | None = None
    error_code: ErrorCode | None = None


@dataclass(frozen=True)
class OrchestratedShot:
    """One prediction's orchestration record: every attempt, and the accepted result."""

    shot_id: str
    generation_id: str
    prediction_index: int
    settings: ShotSettings = field(default_factory=ShotSettings)
    generation_type: GenerationType = GenerationType.AGENTIC
    attempts: tuple[ShotAttempt, ...] = ()
    accepted_task_id: str | None = None
    done: bool = False

    @classmethod
    def start(cls, *, generation_id: str, prediction_index: int, params: TaskParams,
              settings: ShotSettings = ShotSettings(),
              generation_type: GenerationType = GenerationType.AGENTIC,
              shot_id: str | None = None, task_id: str | None = None) -> OrchestratedShot:
        """A shot with its first attempt PENDING (ids default to :func:`shot_id_for` and
        :func:`attempt_task_id`, as ``generations/plan.py`` assigns them)."""
        shot_id = shot_id or shot_id_for(generation_id, prediction_index)
        first = ShotAttempt(1, task_id or attempt_task_id(shot_id, 1), params)
        return cls(shot_id, generation_id, prediction_index, settings, generation_type, (first,))

    @property
    def best(self) -> ShotAttempt | None:
        """The completed attempt with the highest score; ties go to the earliest."""
        scored = [a for a in self.attempts if a.status is TaskStatus.COMPLETED and a.score is not None]
        return max(scored, key=lambda a: (a.score, -a.attempt)) if scored else None

    @property
    def accepted(self) -> ShotAttempt | None:
        return next((a for a in self.attempts if a.task_id == self.accepted_task_id), None)

    @property
    def evaluates(self) -> bool:
        """Whether a COMPLETED attempt goes to the evaluator (AGENTIC only)."""
        return self.generation_type is GenerationType.AGENTIC

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for a processors' table); :meth:`from_dict` reads it back."""
        return {**{k: getattr(self, k) for k in ("shot_id", "generation_id", "prediction_index",
                                                  "accepted_task_id", "done")},
                "settings": asdict(self.settings), "generation_type": self.generation_type.value,
                "attempts": [{**{k: getattr(a, k) for k in ("attempt", "task_id", "score")},
                              "task_type": a.params.task_type.value, "params": a.params.model_dump(mode="json"),
                              "status": a.status.value, "reasons": list(a.reasons),
                              "decision": a.decision and a.decision.value,
                              "error_code": a.error_code and a.error_code.value} for a in self.attempts]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrchestratedShot:
        attempts = tuple(ShotAttempt(
            a["attempt"], a["task_id"], PARAMS_MODELS[TaskType(a["task_type"])].model_validate(a["params"]),
            TaskStatus(a["status"]), a["score"], tuple(a["reasons"]),
            ActionKind(a["decision"]) if a["decision"] else None,
            ErrorCode(a["error_code"]) if a["error_code"] else None) for a in data["attempts"])
        return cls(data["shot_id"], data["generation_id"], data["prediction_index"],
                   ShotSettings(**data["settings"]), GenerationType(data["generation_type"]), attempts,
                   data["accepted_task_id"], data["done"])


@dataclass(frozen=True)
class Completed:
    """The attempt's task COMPLETED; ``score`` and ``reasons`` are the evaluator's (None for BASE)."""

    score: float | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The attempt's task ended FAILED (after its own retries)."""

    code: ErrorCode
    message: str = ""


Outcome = Completed | Failed


@dataclass(frozen=True)
class ShotAction:
    """What the processors do next. ACCEPT / ACCEPT_BEST: ``task_id`` is the accepted task.
    RETRY: submit ``params`` as task ``task_id`` (attempt ``attempt`` of the shot). GIVE_UP: the
    prediction is FAILED."""

    kind: ActionKind
    task_id: str | None = None
    params: TaskParams | None = None
    attempt: int | None = None


# --------------------------------------------------------------------------- ids and seeds


def shot_id_for(generation_id: str, prediction_index: int) -> str:
    """The OrchestratedShot id of a prediction (deterministic: a replay finds the same shot)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{generation_id}/shot/{prediction_index}"))


def attempt_task_id(shot_id: str, attempt: int) -> str:
    """The task id of attempt ``attempt`` of a shot: resubmitting after a replay is idempotent."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{shot_id}/attempt/{attempt}"))


def shot_rng_seed(shot_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(shot_id.encode(), digest_size=8).digest(), "big")


# --------------------------------------------------------------------------- the decision


def on_attempt_finished(shot: OrchestratedShot, task_id: str, outcome: Outcome, *,
                        revise: PromptReviser | None = None) -> tuple[OrchestratedShot, ShotAction | None]:
    """Record how attempt ``task_id`` ended and decide. A repeat of an outcome already recorded,
    or any outcome after the shot is done, changes nothing and returns ``None`` (at-least-once
    delivery makes those normal)."""
    index = next((i for i, a in enumerate(shot.attempts) if a.task_id == task_id), None)
    if index is None:
        raise UnknownAttemptError(f"task {task_id} is not an attempt of shot {shot.shot_id}")
    if shot.done or shot.attempts[index].status is not TaskStatus.PENDING:
        return shot, None
    finished = _record(shot, shot.attempts[index], outcome)
    kind, target = _decide(shot, finished)
    attempts = list(shot.attempts)
    attempts[index] = replace(finished, decision=kind)
    if kind is ActionKind.RETRY:
        number = len(attempts) + 1
        # The reasons of the attempt just judged; a FAILED one has none, and older reasons were
        # already acted on by the attempt that failed, so that retry only changes seed and dials.
        reasons = finished.reasons
        params = adjust(attempts[-1].params, number, reasons, shot_rng_seed(shot.shot_id), revise=revise,
                        tried=[a.params for a in attempts])
        new = ShotAttempt(number, attempt_task_id(shot.shot_id, number), params)
        attempts.append(new)
        return replace(shot, attempts=tuple(attempts)), ShotAction(kind, new.task_id, params, number)
    shot = replace(shot, attempts=tuple(attempts), done=True,
                   accepted_task_id=target.task_id if target else None)
    return shot, ShotAction(kind, target.task_id if target else None)


def _record(shot: OrchestratedShot, attempt: ShotAttempt, outcome: Outcome) -> ShotAttempt:
    if isinstance(outcome, Failed):
        return replace(attempt, status=TaskStatus.FAILED, error_code=ErrorCode(outcome.code))
    if not shot.evaluates:
        return replace(attempt, status=TaskStatus.COMPLETED)
    if outcome.score is None or not 0.0 <= outcome.score <= 1.0:
        raise ValueError(f"an AGENTIC attempt needs an evaluation score in 0..1, got {outcome.score}")
    return replace(attempt, status=TaskStatus.COMPLETED, score=float(outcome.score),
                   reasons=tuple(outcome.reasons))


def _decide(shot: OrchestratedShot, finished: ShotAttempt) -> tuple[ActionKind, ShotAttempt | None]:
    completed = finished.status is TaskStatus.COMPLETED
    if not shot.evaluates:  # BASE: no evaluation, no retry
        return (ActionKind.ACCEPT, finished) if completed else (ActionKind.GIVE_UP, None)
    if completed and cast(float, finished.score) >= shot.settings.min_confidence_score:  # a COMPLETED attempt is scored
        return ActionKind.ACCEPT, finished
    if len(shot.attempts) < shot.settings.max_attempts:
        return ActionKind.RETRY, None
    best = replace(shot, attempts=tuple(finished if a.attempt == finished.attempt else a
                                        for a in shot.attempts)).best
    return (ActionKind.ACCEPT_BEST, best) if best else (ActionKind.GIVE_UP, None)
