"""Admission budgets (pure): which tasks a worker profile refuses before any model work."""

from __future__ import annotations

import pytest

from gpu_consumers.admission import BUDGETS, check_admission, work_units
from gpu_consumers.errors import InvalidInput
from gpu_consumers.models import ModelProfile
from schemas.enums import TaskType
from schemas.task_params import PARAMS_MODELS

G, E = TaskType.GENERATION, TaskType.EDITING


def params(task_type: TaskType, **fields):
    base = {"prompt": "a lighthouse"} if task_type is G else {
        "prompt": "a lighthouse", "base_image_url": "file:///in.png"}
    return PARAMS_MODELS[task_type](**{**base, **fields})


@pytest.mark.parametrize("profile", ["offline", "production"])
def test_the_issues_request_is_refused_on_every_profile_with_the_numbers(profile: str) -> None:
    huge = params(G, width=4096, height=4096, provider_config={"num_inference_steps": 150})
    with pytest.raises(InvalidInput, match=f"2,516,582,400 work units.*{profile} profile admits"):
        check_admission(G, huge, profile, {})


@pytest.mark.parametrize("task_type", [G, E])
@pytest.mark.parametrize("profile", list(ModelProfile))
def test_the_budget_is_inclusive(task_type: TaskType, profile: ModelProfile) -> None:
    budget = BUDGETS[profile][task_type]
    steps = 50
    side = int((budget / steps) ** 0.5) // 8 * 8
    at = params(task_type, width=side, height=side, provider_config={"num_inference_steps": steps})
    assert work_units(task_type, at, profile) <= budget
    check_admission(task_type, at, profile.value, {})  # admitted
    with pytest.raises(InvalidInput):
        check_admission(task_type, at, profile.value, {task_type: work_units(task_type, at, profile) - 1})


def test_defaults_are_admitted_and_unset_steps_are_the_profiles_default() -> None:
    default = params(G)  # 1024 x 1024, steps unset
    assert work_units(G, default, ModelProfile.OFFLINE) == 1024 * 1024 * 2
    assert work_units(G, default, ModelProfile.PRODUCTION) == 1024 * 1024 * 30
    for profile in ModelProfile:
        check_admission(G, default, profile.value, {})


def test_an_override_raises_or_lowers_a_types_budget() -> None:
    huge = params(G, width=4096, height=4096, provider_config={"num_inference_steps": 150})
    check_admission(G, huge, "offline", {G: 3e9})
    with pytest.raises(InvalidInput):
        check_admission(G, params(G, width=64, height=64), "offline", {G: 100})


def test_tasks_whose_size_comes_from_an_input_are_not_measured() -> None:
    sized_by_input = params(E, provider_config={"num_inference_steps": 150})  # no width/height
    assert work_units(E, sized_by_input, ModelProfile.OFFLINE) is None
    check_admission(E, sized_by_input, "offline", {E: 1})
    adjust = PARAMS_MODELS[TaskType.IMAGE_ADJUSTER](base_image_url="file:///in.png")
    assert work_units(TaskType.IMAGE_ADJUSTER, adjust, ModelProfile.OFFLINE) is None
