from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.detail_enhancer import DiffusersDetailEnhancer
from schemas.task_params import DetailEnhancerParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image

URL = "file:///inputs/photo.png"


def enhance(cache, harness: Harness | None = None, image=None, seed=0, **kw):
    harness = harness or Harness()
    harness.add(URL, noise_image(48, 64, seed=2) if image is None else image)
    config = {**kw.pop("provider_config", {}), "seed": seed}
    params = DetailEnhancerParams(base_image_url=URL, provider_config=config, **kw)
    return DiffusersDetailEnhancer().run(params, model_ctx(harness, cache))


def test_low_strength_img2img(model_cache):
    harness = Harness()
    result = enhance(model_cache, harness, strength=1.0, prompt="crisp fabric texture")
    assert output_image(result).size == (64, 48) and output_image(result).mode == "RGB"
    assert result.extra["img2img_strength"] == 0.5  # half the task's strength
    assert differs(decode(result), noise_image(48, 64, seed=2), 10)
    harness.assert_progress_complete()


def test_preserve_original_stays_close(model_cache):
    base = noise_image(48, 64, seed=2).astype(np.int16)
    free = decode(enhance(model_cache, strength=1.0)).astype(np.int16)
    close = decode(enhance(model_cache, strength=1.0, preserve_original=True)).astype(np.int16)
    assert np.abs(close - base).max() <= 16 < np.abs(free - base).max()


def test_seeds_and_zero_strength(model_cache):
    a, b, c = (decode(enhance(model_cache, seed=s, strength=1.0)) for s in (1, 1, 2))
    assert np.array_equal(a, b) and differs(a, c, 5)
    assert np.array_equal(decode(enhance(model_cache, strength=0.0)), noise_image(48, 64, seed=2))


def test_odd_size_and_alpha_are_kept(model_cache):
    rgba = np.dstack([noise_image(37, 53), np.full((37, 53), 128, np.uint8)])
    out = decode(enhance(model_cache, image=Image.fromarray(rgba, "RGBA"), strength=1.0))
    assert out.shape == (37, 53, 4) and (out[..., 3] == 128).all()


def test_provider_config_and_cancel(model_cache):
    with pytest.raises(InvalidInput, match="guidance_scale"):
        enhance(model_cache, provider_config={"guidance_scale": "high"})
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        enhance(model_cache, harness, strength=1.0, provider_config={"num_inference_steps": 4})
    assert harness.progress == [0.5]
