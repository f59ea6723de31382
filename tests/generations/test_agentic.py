"""The AGENTIC decision loop, pure: scripted evaluator scores drive OrchestratedShots."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generations.agentic import (
    GUIDANCE_FALLBACK,
    STEPS_FALLBACK,
    ActionKind,
    Completed,
    Failed,
    OrchestratedShot,
    ShotSettings,
    UnknownAttemptError,
    adjust,
    attempt_task_id,
    on_attempt_finished,
    revise_prompt,
    shot_id_for,
)
from processors.evaluators import ScriptedEvaluator
from schemas.enums import ErrorCode, EvaluationDecision, GenerationType, TaskStatus
from schemas.task_params import EditingParams, GenerationParams, ImageAdjusterParams

GENERATION_ID = "6f1c1d1e-7d55-4a55-9a6e-2f1f0f3b8c11"
PARAMS = GenerationParams(prompt="full-body shot of Anna featuring a red linen dress", seed=41,
                          subject_lora_weight=0.8)


def new_shot(max_attempts: int = 3, threshold: float = 0.7,
             generation_type: GenerationType = GenerationType.AGENTIC) -> OrchestratedShot:
    return OrchestratedShot.start(generation_id=GENERATION_ID, prediction_index=0, params=PARAMS,
                                  settings=ShotSettings(max_attempts, threshold),
                                  generation_type=generation_type)


def run(shot: OrchestratedShot, evaluator: ScriptedEvaluator, failures: set[int] = frozenset()):
    """Finish attempts until the shot is done; attempt numbers in ``failures`` end FAILED."""
    actions = []
    while not shot.done:
        current = shot.attempts[-1]
        if current.attempt in failures:
            outcome = Failed(ErrorCode.PROVIDER_ERROR, "GPU fell over")
        else:
            evaluation = evaluator.next_evaluation()
            outcome = Completed(evaluation.score, evaluation.reasons)
        shot, action = on_attempt_finished(shot, current.task_id, outcome)
        actions.append(action)
    return shot, actions


def test_accept_at_attempt_1():
    shot, actions = run(new_shot(), ScriptedEvaluator([0.9]))
    assert [a.kind for a in actions] == [ActionKind.ACCEPT]
    assert shot.done and len(shot.attempts) == 1
    assert shot.accepted_task_id == shot.attempts[0].task_id == actions[0].task_id
    assert shot.attempts[0].score == 0.9 and shot.attempts[0].decision is ActionKind.ACCEPT
    assert ActionKind.ACCEPT.evaluation_decision is EvaluationDecision.ACCEPT


def test_reject_then_accept_at_attempt_2_with_a_changed_seed():
    shot, actions = run(new_shot(), ScriptedEvaluator([(0.4, ["blurry (sharpness 0.12)"]), 0.8]))
    assert [a.kind for a in actions] == [ActionKind.RETRY, ActionKind.ACCEPT]
    first, second = shot.attempts
    retry = actions[0]
    assert retry.attempt == 2 and retry.task_id == second.task_id == attempt_task_id(shot.shot_id, 2)
    assert retry.params == second.params
    assert second.params.seed != first.params.seed
    # attempt 2: a new seed and the prompt revised with the reason; nothing else
    assert second.params.prompt == f"{PARAMS.prompt}, sharp focus, crisp fine detail"
    assert second.params.model_dump(exclude={"seed", "prompt"}) == first.params.model_dump(exclude={"seed", "prompt"})
    assert shot.accepted_task_id == second.task_id
    assert (first.score, first.reasons, first.decision) == (0.4, ("blurry (sharpness 0.12)",), ActionKind.RETRY)
    assert (second.score, second.decision) == (0.8, ActionKind.ACCEPT)


def test_three_rejections_accept_the_best_of_three():
    shot, actions = run(new_shot(), ScriptedEvaluator([0.3, 0.6, 0.5]))
    assert [a.kind for a in actions] == [ActionKind.RETRY, ActionKind.RETRY, ActionKind.ACCEPT_BEST]
    assert len(shot.attempts) == 3
    assert shot.accepted_task_id == shot.attempts[1].task_id == actions[-1].task_id
    assert shot.accepted.score == 0.6
    assert [a.decision for a in shot.attempts] == [ActionKind.RETRY, ActionKind.RETRY, ActionKind.ACCEPT_BEST]
    # attempt 3: new seed again, more steps and a little more guidance
    third = shot.attempts[2].params
    assert len({a.params.seed for a in shot.attempts}) == 3
    assert third.provider_config == {"num_inference_steps": round(STEPS_FALLBACK * 1.5),
                                     "guidance_scale": GUIDANCE_FALLBACK + 1.0}


def test_best_of_equal_scores_is_the_earliest():
    shot, _ = run(new_shot(), ScriptedEvaluator([0.5, 0.5, 0.5]))
    assert shot.accepted_task_id == shot.attempts[0].task_id


def test_a_failed_attempt_counts_and_is_never_the_best():
    shot, actions = run(new_shot(), ScriptedEvaluator([0.4, 0.2]), failures={1})
    assert [a.kind for a in actions] == [ActionKind.RETRY, ActionKind.RETRY, ActionKind.ACCEPT_BEST]
    assert [a.status for a in shot.attempts] == [TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.COMPLETED]
    assert shot.attempts[0].error_code is ErrorCode.PROVIDER_ERROR and shot.attempts[0].score is None
    assert shot.accepted_task_id == shot.attempts[1].task_id


def test_all_attempts_failed_gives_up():
    shot, actions = run(new_shot(), ScriptedEvaluator([]), failures={1, 2, 3})
    assert [a.kind for a in actions] == [ActionKind.RETRY, ActionKind.RETRY, ActionKind.GIVE_UP]
    assert shot.done and shot.accepted_task_id is None and actions[-1].task_id is None
    assert ActionKind.GIVE_UP.evaluation_decision is None


@pytest.mark.parametrize("outcome, kind", [(Completed(), ActionKind.ACCEPT),
                                           (Completed(0.1), ActionKind.ACCEPT),
                                           (Failed(ErrorCode.PROVIDER_TIMEOUT), ActionKind.GIVE_UP)])
def test_base_never_evaluates_or_retries(outcome, kind):
    shot = new_shot(generation_type=GenerationType.BASE)
    assert not shot.evaluates
    shot, action = on_attempt_finished(shot, shot.attempts[0].task_id, outcome)
    assert action.kind is kind and shot.done and len(shot.attempts) == 1
    assert shot.attempts[0].score is None  # a BASE score is never recorded


def test_a_repeated_outcome_changes_nothing_and_a_foreign_task_is_refused():
    shot = new_shot()
    task = shot.attempts[0].task_id
    after, action = on_attempt_finished(shot, task, Completed(0.2))
    assert action.kind is ActionKind.RETRY
    assert on_attempt_finished(after, task, Completed(0.9)) == (after, None)
    with pytest.raises(UnknownAttemptError):
        on_attempt_finished(after, "8b1b6a8e-0000-4000-8000-000000000000", Completed(0.9))


def test_an_agentic_attempt_needs_a_score():
    shot = new_shot()
    with pytest.raises(ValueError, match="score"):
        on_attempt_finished(shot, shot.attempts[0].task_id, Completed())


def test_retries_revise_the_prompt_with_the_reasons():
    reasons = ["blurry (sharpness 0.20)", "distorted hands"]
    shot, _ = run(new_shot(max_attempts=5), ScriptedEvaluator([(0.1, reasons)] * 5))
    prompts = [a.params.prompt for a in shot.attempts]
    assert prompts[0] == PARAMS.prompt
    assert prompts[1] == f"{PARAMS.prompt}, sharp focus, crisp fine detail, avoid: distorted hands"
    assert prompts[2:] == [prompts[1]] * 3  # the same reasons add nothing twice
    assert len({a.params.seed for a in shot.attempts}) == 5


def test_a_retry_after_a_failed_attempt_does_not_act_on_older_reasons_again():
    params = ImageAdjusterParams(base_image_url="https://example.com/a.png", brightness=0.1)
    shot = OrchestratedShot.start(generation_id=GENERATION_ID, prediction_index=0, params=params)
    shot, _ = on_attempt_finished(shot, shot.attempts[0].task_id, Completed(0.2, ("too dark",)))
    shot, _ = on_attempt_finished(shot, shot.attempts[1].task_id, Failed(ErrorCode.PROVIDER_ERROR))
    first, second, third = (a.params for a in shot.attempts)
    assert second.brightness == 0.25  # the reason moved it up once
    assert third.brightness == 0.25 and third.contrast == 0.15  # not again: explored instead


def test_the_decisions_are_deterministic():
    """Same shot, same outcome: same next task and parameters (a replay resubmits the same task)."""
    shot = new_shot()
    assert on_attempt_finished(shot, shot.attempts[0].task_id, Completed(0.3)) == \
        on_attempt_finished(shot, shot.attempts[0].task_id, Completed(0.3))
    assert shot.shot_id == shot_id_for(GENERATION_ID, 0)


def test_adjust_uses_only_the_knobs_a_task_type_has():
    edit = EditingParams(base_image_url="https://example.com/a.png", prompt="place the dress")
    second = adjust(edit, 2, [], rng_seed=7)
    assert set(second.provider_config) == {"seed"}  # EDITING takes its seed in provider_config
    assert second.strength is None  # no reason, and the seed makes it a new try: left alone
    third = adjust(second, 3, [], rng_seed=7)
    assert set(third.provider_config) == {"seed", "num_inference_steps", "guidance_scale"}
    adjuster = ImageAdjusterParams(base_image_url="https://example.com/a.png", prompt="warmer")
    assert adjust(adjuster, 3, [], rng_seed=7).provider_config is None  # no seed, steps or guidance
    # Its reasons steer the numbers; the guidance stays as the caller wrote it.
    steered = adjust(adjuster, 2, ["dull colours (colourfulness 0.10)"], 7)
    assert (steered.prompt, steered.saturation) == ("warmer", 0.15)
    assert adjust(PARAMS, 2, ["x"], 7, revise=lambda p, r: "llm revision").prompt == "llm revision"
    with pytest.raises(ValueError):
        adjust(PARAMS, 1, [], 7)


def test_revise_prompt_without_a_prompt():
    assert revise_prompt("", ["overexposed: clipped exposure (exposure 0.10)"]) == \
        "balanced exposure, no blown highlights"


outcomes = st.one_of(st.floats(0.0, 1.0).map(Completed),
                     st.sampled_from(list(ErrorCode)).map(Failed))


@settings(max_examples=300, deadline=None)
@given(max_attempts=st.integers(1, 6), threshold=st.floats(0.0, 1.0),
       script=st.lists(outcomes, min_size=6, max_size=6))
def test_attempts_never_exceed_max_and_the_accepted_task_is_an_attempt(max_attempts, threshold, script):
    shot = new_shot(max_attempts, threshold)
    for outcome in script:
        if shot.done:
            break
        shot, action = on_attempt_finished(shot, shot.attempts[-1].task_id, outcome)
        assert len(shot.attempts) <= max_attempts
    assert shot.done  # at most max_attempts outcomes end any shot
    assert OrchestratedShot.from_dict(json.loads(json.dumps(shot.to_dict()))) == shot
    task_ids = [a.task_id for a in shot.attempts]
    assert len(set(task_ids)) == len(task_ids)
    assert all(a.decision is not None and a.status is not TaskStatus.PENDING for a in shot.attempts)
    if shot.accepted_task_id is None:
        assert all(a.status is TaskStatus.FAILED for a in shot.attempts)
        assert action.kind is ActionKind.GIVE_UP
    else:
        assert shot.accepted_task_id in task_ids
        accepted = shot.accepted
        assert accepted.status is TaskStatus.COMPLETED
        if action.kind is ActionKind.ACCEPT_BEST:
            assert accepted.score == max(a.score for a in shot.attempts if a.score is not None)
            assert len(shot.attempts) == max_attempts
        else:
            assert action.kind is ActionKind.ACCEPT and accepted.score >= threshold
