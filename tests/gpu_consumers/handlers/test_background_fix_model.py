from __future__ import annotations

import numpy as np
import pytest

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.background_fix import DiffusersBackgroundFix
from schemas.task_params import BackgroundFixParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image, subject_on_plain

BASE, BACKDROP = "file:///inputs/shot.png", "file:///inputs/backdrop.png"


def fix(cache, harness: Harness | None = None, seed: int | None = 0, **kw):
    harness = harness or Harness()
    harness.add(BASE, subject_on_plain((48, 64)))
    harness.add(BACKDROP, noise_image(30, 50, seed=9))
    config = {**kw.pop("provider_config", {}), **({"seed": seed} if seed is not None else {})}
    params = BackgroundFixParams(base_image_url=BASE, provider_config=config, **kw)
    return DiffusersBackgroundFix().run(params, model_ctx(harness, cache))


def test_prompt_inpaints_a_new_background(model_cache):
    harness = Harness()
    result = fix(model_cache, harness, background_prompt="white studio background")
    image = output_image(result)
    assert image.size == (64, 48) and image.mode == "RGB"
    assert result.extra["mode"] == "inpaint" and result.seed == 0
    assert result.model.startswith("offline:inpaint-")
    assert result.extra["segmentation_model"].startswith("offline:segmentation-")
    assert differs(decode(result), subject_on_plain((48, 64)), 10)
    harness.assert_progress_complete()


def test_seeds(model_cache):
    a, b, c = (decode(fix(model_cache, seed=s, background_prompt="a beach")) for s in (1, 1, 2))
    assert np.array_equal(a, b) and differs(a, c, 5)


def test_background_image_is_composited(model_cache):
    result = fix(model_cache, background_image_url=BACKDROP, seed=None)
    assert result.extra["mode"] == "composite" and result.seed is None
    assert output_image(result).size == (64, 48)


def test_mask_expansion_grows_the_foreground(model_cache):
    def fraction(expansion):
        return fix(model_cache, background_image_url=BACKDROP, mask_expansion=expansion,
                   blend_strength=0.0, seed=None).extra["foreground_fraction"]

    assert fraction(0) < fraction(4) <= 1.0


def test_needs_a_prompt_or_an_image(model_cache):
    harness = Harness()
    with pytest.raises(InvalidInput, match="background_prompt or background_image_url"):
        fix(model_cache, harness)
    assert harness.progress == []


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=2)  # the first report is the mask
    with pytest.raises(TaskCancelled):
        fix(model_cache, harness, background_prompt="a beach")
    assert harness.progress == [0.5, 0.75]
