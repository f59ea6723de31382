"""AGENTIC retries, per attempt: every strategy's attempts are genuinely different tries, for the
weight-free providers too, and the evaluator's reasons steer them (scripted evaluator)."""

from __future__ import annotations

import pytest

from generations.agentic import Completed, OrchestratedShot, ShotSettings, on_attempt_finished
from generations.steering import DIALS, Signal, adjust, signals
from processors.evaluators import ScriptedEvaluator
from schemas.task_params import (
    BackgroundFixParams,
    DetailEnhancerParams,
    EditingParams,
    FaceEnhancerParams,
    GenerationParams,
    ImageAdjusterParams,
    RefineParams,
    TaskParams,
    VideoGenerationParams,
)

URL = "https://example.com/base.png"
GENERATION_ID = "0d6c1f1e-7d55-4a55-9a6e-2f1f0f3b8c22"
# One task of each type an AGENTIC generation (or its follow-up) runs, as plan.py makes them.
FIRST_ATTEMPTS: dict[str, TaskParams] = {
    "GENERATION": GenerationParams(prompt="full-body shot of Anna", seed=41),
    "EDITING": EditingParams(base_image_url=URL, prompt="composite the dress"),
    "REFINE": RefineParams(base_image_url=URL, upscale_factor=2.0, provider_config={"seed": 5}),
    "VIDEO_GENERATION": VideoGenerationParams(base_image_url=URL, seed=3),
    "BACKGROUND_FIX": BackgroundFixParams(base_image_url=URL, background_image_url=URL),
    "IMAGE_ADJUSTER": ImageAdjusterParams(base_image_url=URL, brightness=0.1),
    "FACE_ENHANCER": FaceEnhancerParams(base_image_url=URL, strength=0.5),
    "DETAIL_ENHANCER": DetailEnhancerParams(base_image_url=URL),
}


def attempts(params: TaskParams, script: list, max_attempts: int | None = None) -> list[TaskParams]:
    """Every attempt's parameters of a shot that the scripted evaluator keeps rejecting."""
    shot = OrchestratedShot.start(generation_id=GENERATION_ID, prediction_index=0, params=params,
                                  settings=ShotSettings(max_attempts or len(script), 0.7))
    evaluator = ScriptedEvaluator(script)
    while not shot.done:
        evaluation = evaluator.next_evaluation()
        shot, _ = on_attempt_finished(shot, shot.attempts[-1].task_id,
                                      Completed(evaluation.score, evaluation.reasons))
    return [a.params for a in shot.attempts]


def read_by_every_provider(params: TaskParams) -> tuple:
    """What the type's weight-free provider reads (its dials), else the seed its models read."""
    dials, _ = DIALS.get(params.task_type, ((), None))
    seed = getattr(params, "seed", None) or (params.provider_config or {}).get("seed")
    if DIALS.get(params.task_type, (None, None))[1] is not None:  # a classical provider exists
        return tuple(getattr(params, d.field) for d in dials)
    return (seed,)


@pytest.mark.parametrize("name", FIRST_ATTEMPTS)
def test_every_attempt_is_a_new_try_for_every_provider_when_the_reasons_say_nothing(name):
    # "scripted score 0.10": a reason that names nothing a parameter can fix
    tries = attempts(FIRST_ATTEMPTS[name], [0.1] * 5)
    seen = [read_by_every_provider(p) for p in tries]
    assert len(set(seen)) == 5, seen
    assert len({p.model_dump_json() for p in tries}) == 5


def test_an_adjuster_explores_contrast_around_the_first_attempt_without_a_reason():
    tries = attempts(FIRST_ATTEMPTS["IMAGE_ADJUSTER"], [0.1] * 5)
    assert [p.contrast for p in tries] == [None, 0.15, -0.15, 0.3, -0.3]
    assert {p.brightness for p in tries} == {0.1}  # what the caller asked for stays


def test_the_reasons_steer_the_image_adjuster():
    start = ImageAdjusterParams(base_image_url=URL, prompt="a touch warmer")
    tries = attempts(start, [(0.2, ["clipped shadows: underexposed (exposure 0.20)"]),
                             (0.3, ["faded: low contrast (contrast 0.30)", "dull colours (colourfulness 0.10)"]),
                             (0.3, ["too warm"]), 0.4])
    assert [(p.brightness, p.contrast, p.saturation, p.warmth) for p in tries] == [
        (None, None, None, None), (0.15, None, None, None), (0.15, 0.15, 0.15, None),
        (0.15, 0.15, 0.15, -0.15)]
    assert {p.prompt for p in tries} == {"a touch warmer"}  # the numbers carry the steering


def test_a_reversed_move_goes_half_as_far_instead_of_repeating_a_tried_setting():
    tries = attempts(ImageAdjusterParams(base_image_url=URL),
                     [(0.2, ["too dark"]), (0.2, ["overexposed"]), (0.2, ["too dark"]), 0.3])
    assert [p.brightness for p in tries] == [None, 0.15, 0.075, 0.1125]


@pytest.mark.parametrize("name", ["FACE_ENHANCER", "DETAIL_ENHANCER"])
def test_the_reasons_steer_the_enhancers_strength_and_their_model_providers_prompt(name):
    tries = attempts(FIRST_ATTEMPTS[name], [(0.2, ["blurry (sharpness 0.10)"]), (0.3, ["JPEG artefacts"]), 0.4])
    assert [p.strength for p in tries] == [FIRST_ATTEMPTS[name].strength, 0.65, 0.575]
    assert tries[1].prompt == "sharp focus, crisp fine detail"  # the diffusers provider reads it
    assert len({p.provider_config["seed"] for p in tries[1:]}) == 2  # ... and its seed


def test_the_reasons_steer_refine_background_fix_and_editing():
    refine = attempts(FIRST_ATTEMPTS["REFINE"], [(0.2, ["blurry"]), (0.2, ["noisy (noise 0.20)"]), 0.3])
    assert [(p.upscale_steps, p.upscale_denoise) for p in refine] == [(None, None), (20, None), (20, 0.4)]
    fix = attempts(FIRST_ATTEMPTS["BACKGROUND_FIX"], [(0.2, ["bad cut-out: halo (alpha 0.30)"]), 0.3])
    assert [p.blend_strength for p in fix] == [None, 0.35]
    edit = attempts(FIRST_ATTEMPTS["EDITING"], [(0.2, ["off-prompt (alignment 0.31)"]), 0.3])
    assert [p.strength for p in edit] == [None, 0.85]
    assert edit[1].prompt == "composite the dress, faithful to every detail of the description"


def test_generation_keeps_its_ladder():
    tries = attempts(FIRST_ATTEMPTS["GENERATION"], [(0.2, ["blurry"]), (0.2, ["blurry"]), 0.3])
    assert len({p.seed for p in tries}) == 3
    assert tries[2].provider_config == {"num_inference_steps": 45, "guidance_scale": 8.0}


def test_signals_read_the_evaluators_reasons():
    assert signals(["clipped highlights: overexposed (exposure 0.10; 30% of pixels ...)",
                    "clipped shadows: underexposed (exposure 0.20)", "faded: low contrast (contrast 0.30)",
                    "dull colours (colourfulness 0.10)", "blurry (sharpness 0.12)", "noisy (noise 0.40)",
                    "bad cut-out: holes (alpha 0.20)", "off-prompt (alignment 0.31)", "image is too dark",
                    "scripted score 0.40"]) == (
        Signal.BRIGHT, Signal.DARK, Signal.FLAT, Signal.DULL, Signal.SOFT, Signal.NOISY, Signal.CUTOUT,
        Signal.OFF_PROMPT)


def test_a_judges_sentence_can_name_several_faults():
    assert signals(["The image is too dark, and the colours look dull while the edges are soft."]) == (
        Signal.DARK, Signal.DULL, Signal.SOFT)
    assert signals(["bad cut-out: soft, semi-transparent matte (alpha 0.30; 20% transparent)"]) == (Signal.CUTOUT,)


def test_adjust_is_deterministic_and_keeps_values_in_range():
    far = ImageAdjusterParams(base_image_url=URL, brightness=0.95)
    once = adjust(far, 2, ["too dark"], 7, tried=[far])
    assert once == adjust(far, 2, ["too dark"], 7, tried=[far])
    assert once.brightness == 1.0  # clamped to the contract's range
