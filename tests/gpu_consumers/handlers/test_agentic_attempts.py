"""The weight-free handlers produce a different image on every AGENTIC attempt: the retries'
parameters (generations/steering.py) change what these handlers read, even when the evaluator's
reasons name nothing (a scripted score)."""

from __future__ import annotations

import pytest

from generations.agentic import Completed, OrchestratedShot, ShotSettings, on_attempt_finished
from gpu_consumers.handlers.detail_enhancer import ClassicalDetailEnhancer
from gpu_consumers.handlers.face_enhancer import ClassicalFaceEnhancer
from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler
from schemas.task_params import DetailEnhancerParams, FaceEnhancerParams, ImageAdjusterParams
from tests.gpu_consumers.handlers.support import Harness, face_on_backdrop

URL = "https://cdn.example/base.png"


def every_attempt(first, attempts: int = 3):
    shot = OrchestratedShot.start(generation_id="6a1c1d1e-7d55-4a55-9a6e-2f1f0f3b8c33", prediction_index=0,
                                  params=first, settings=ShotSettings(attempts, 0.9))
    while not shot.done:
        shot, _ = on_attempt_finished(shot, shot.attempts[-1].task_id, Completed(0.4, ("scripted score 0.40",)))
    return [a.params for a in shot.attempts]


@pytest.mark.parametrize(("handler", "first"), [
    (ImageAdjusterHandler(), ImageAdjusterParams(base_image_url=URL, brightness=0.1, prompt="warmer")),
    (ClassicalDetailEnhancer(), DetailEnhancerParams(base_image_url=URL)),
    (ClassicalFaceEnhancer(), FaceEnhancerParams(base_image_url=URL, strength=0.5)),
])
def test_three_attempts_give_three_different_images(handler, first):
    image = face_on_backdrop()
    outputs = []
    for params in every_attempt(first):
        harness = Harness()
        harness.add(URL, image)
        outputs.append(handler.run(params, harness.ctx()).outputs[0].data)
    assert len(set(outputs)) == 3


# The provider_config whitelist of each type's model provider, as the handlers define it.
WHITELISTS = {
    "EDITING": ("editing", "OPTIONS"), "BACKGROUND_FIX": ("background_fix", "OPTIONS"),
    "REFINE": ("refine", "DIFFUSION_REFINE_OPTIONS"), "FACE_ENHANCER": ("face_enhancer", "OPTIONS"),
    "DETAIL_ENHANCER": ("detail_enhancer", "OPTIONS"), "GENERATION": ("generation", "GENERATION_OPTIONS"),
    "VIDEO_GENERATION": ("video_generation", "OPTIONS"),
}


@pytest.mark.parametrize("name", WHITELISTS)
def test_the_retry_knobs_are_keys_the_model_providers_accept(name):
    """A retry's provider_config must pass the handler's whitelist (else INVALID_INPUT)."""
    import importlib

    from generations.steering import _KNOBS
    from schemas.enums import TaskType

    module, attribute = WHITELISTS[name]
    accepted = getattr(importlib.import_module(f"gpu_consumers.handlers.{module}"), attribute)
    knobs = _KNOBS[TaskType(name)]
    wanted = {"seed": knobs.seed == "config", "num_inference_steps": knobs.steps,
              "guidance_scale": knobs.guidance}
    keys = {key for key, used in wanted.items() if used}
    assert keys <= set(accepted)
