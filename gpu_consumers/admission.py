"""Admission: a task that asks for more work than this worker's model profile can do within its
time limit is refused before any model work, FAILED/INVALID_INPUT with the numbers.

The measure is *work units* = output pixels x denoising steps (x frames where a type has them):
what a diffusion pipeline's time and activation memory grow with. The parameter schema alone
allows 4096 x 4096 at 150 steps; on the offline profile (tiny models on a CPU) that is a run of
many minutes and gigabytes that no time limit can use, and retrying it only takes the next worker
down. The budgets below are per profile and per type; ``WORKER_ADMISSION_BUDGETS`` overrides them
(a bigger GPU, a longer time limit).

Types whose size comes from an input file (the video's frames are the input image's size, and
capped at the handler's ``max_frames``; the classical types are bounded by the input limits) are
not measured here: their runtime bound is the supervised hard stop.
"""

from __future__ import annotations

from typing import Any

from gpu_consumers.errors import InvalidInput
from gpu_consumers.model_cache import DEFAULT_STEPS
from gpu_consumers.models import ModelProfile, Role
from schemas.enums import TaskType

_MEGA = 1024 * 1024
# Offline: 1024 x 1024 at 50 steps, the default size with many more steps than the tiny models
# default to; a 4096 x 4096 x 150 request is 48 times over. Production (a GPU): 2048 x 2048 at
# 100 steps, about what an SDXL-class model finishes within the ten-minute default time limit.
BUDGETS: dict[ModelProfile, dict[TaskType, float]] = {
    ModelProfile.OFFLINE: {TaskType.GENERATION: 50.0 * _MEGA, TaskType.EDITING: 50.0 * _MEGA},
    ModelProfile.PRODUCTION: {TaskType.GENERATION: 400.0 * _MEGA,
                              TaskType.EDITING: 400.0 * _MEGA},
}
_ROLE = {TaskType.GENERATION: Role.TEXT_TO_IMAGE, TaskType.EDITING: Role.INPAINT}


def work_units(task_type: TaskType, params: Any, profile: ModelProfile) -> float | None:
    """The work a task asks for, or None when its parameters do not say (size from an input)."""
    role = _ROLE.get(task_type)
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    if role is None or width is None or height is None:
        return None
    steps = (getattr(params, "provider_config", None) or {}).get("num_inference_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        steps = DEFAULT_STEPS[profile].get(role, 1)  # an invalid value is the handler's to refuse
    return float(width * height * steps)


def check_admission(task_type: TaskType, params: Any, profile: str,
                    overrides: dict[TaskType, float]) -> None:
    """Raise InvalidInput when the task is over its type's budget on ``profile``."""
    model_profile = ModelProfile(profile)
    budget = overrides.get(task_type, BUDGETS[model_profile].get(task_type))
    units = work_units(task_type, params, model_profile)
    if budget is None or units is None or units <= budget:
        return
    raise InvalidInput(
        f"{task_type.value} asks for {units:,.0f} work units (width x height x "
        f"num_inference_steps); this worker's {profile} profile admits at most {budget:,.0f}: "
        f"ask for a smaller size or fewer steps")
