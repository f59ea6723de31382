from __future__ import annotations

import numpy as np
import pytest

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.editing import DiffusersEditing
from schemas.task_params import EditingParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image

BASE, MASK = "file:///inputs/base.png", "file:///inputs/mask.png"
GARMENT, SUBJECT = "file:///inputs/garment.png", "file:///inputs/subject.png"


def square_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def edit(cache, harness: Harness | None = None, seed: int | None = 0, **kw):
    harness = harness or Harness()
    harness.add(BASE, noise_image(64, 64, seed=1))
    harness.add(MASK, square_mask())
    harness.add(GARMENT, noise_image(40, 32, seed=2))
    harness.add(SUBJECT, noise_image(40, 32, seed=4))
    config = dict(kw.pop("provider_config", {}))
    if seed is not None:
        config["seed"] = seed
    params = EditingParams(base_image_url=BASE, prompt=kw.pop("prompt", "place the dress"),
                           provider_config=config, **kw)
    return DiffusersEditing().run(params, model_ctx(harness, cache))


def test_img2img_without_mask(model_cache):
    harness = Harness()
    result = edit(model_cache, harness, strength=0.8)
    image = output_image(result)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert result.extra["mode"] == "img2img" and result.seed == 0
    assert differs(decode(result), noise_image(64, 64, seed=1), 10)
    harness.assert_progress_complete()


def test_output_size_and_seeds(model_cache):
    result = edit(model_cache, width=80, height=72, strength=0.8)
    assert output_image(result).size == (80, 72) and (result.width, result.height) == (80, 72)
    assert output_image(edit(model_cache, width=96)).size == (96, 96)  # aspect kept
    a, b, c = (decode(edit(model_cache, seed=s, strength=0.9)) for s in (3, 3, 4))
    assert np.array_equal(a, b) and differs(a, c, 10)


def test_strength_zero_returns_the_base_image(model_cache):
    result = edit(model_cache, strength=0.0)
    assert result.extra["num_inference_steps"] is None
    assert np.array_equal(decode(result), noise_image(64, 64, seed=1))


def test_inpainting_changes_only_the_masked_area(model_cache):
    result = edit(model_cache, mask_url=MASK)
    out, base = decode(result), noise_image(64, 64, seed=1)
    assert result.extra["mode"] == "inpaint" and result.extra["strength"] == 1.0
    assert result.model.startswith("offline:inpaint-")
    outside = square_mask() == 0
    assert np.array_equal(out[outside], base[outside])
    assert differs(out[16:48, 16:48], base[16:48, 16:48], 10)


def test_mask_of_the_wrong_size_is_invalid_input(model_cache):
    harness = Harness()
    harness.add(BASE, noise_image(64, 64))
    harness.add(MASK, square_mask(32))
    with pytest.raises(InvalidInput, match="mask is 32x32, image is 64x64"):
        DiffusersEditing().run(EditingParams(base_image_url=BASE, mask_url=MASK),
                               model_ctx(harness, model_cache))
    assert harness.progress == []  # refused before any model work


def test_garment_reference_guides_the_edit(model_cache):
    plain = decode(edit(model_cache, strength=0.9))
    refs = [{"url": SUBJECT, "type": "subject"}, {"url": GARMENT, "type": "garment"}]
    guided = edit(model_cache, strength=0.9, reference_images=refs,
                  provider_config={"reference_image_strength": 1.0})
    assert guided.extra["reference"] == {"url": GARMENT, "type": "garment", "scale": 1.0}
    assert guided.extra["unused_references"] == [SUBJECT]
    assert differs(decode(guided), plain, 5)
    assert np.array_equal(decode(edit(model_cache, strength=0.9)), plain)  # no reference: as before


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        edit(model_cache, harness, strength=1.0)
    assert harness.progress == [0.5]


def test_inpainting_with_a_reference(model_cache):
    refs = [{"url": GARMENT, "type": "garment"}]
    plain = decode(edit(model_cache, mask_url=MASK))
    guided = decode(edit(model_cache, mask_url=MASK, reference_images=refs,
                         provider_config={"reference_image_strength": 1.0}))
    outside = square_mask() == 0
    assert np.array_equal(guided[outside], noise_image(64, 64, seed=1)[outside])
    assert differs(guided, plain, 5)
