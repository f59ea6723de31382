from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.face_detection import FaceDetector
from gpu_consumers.handlers.refine import DiffusersRefine
from schemas.task_params import RefineParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image

URL = "file:///inputs/gen.png"
FACE = (20, 16, 24, 28)  # x, y, w, h on the 64 x 64 upscaled image


def refine(cache, harness: Harness | None = None, image=None, detector=None, seed=0, **kw):
    harness = harness or Harness()
    harness.add(URL, noise_image(32, 32, seed=1) if image is None else image)
    config = {**kw.pop("provider_config", {}), **({"seed": seed} if seed is not None else {})}
    params = RefineParams(base_image_url=URL, provider_config=config, **kw)
    return DiffusersRefine(face_detector=detector).run(params, model_ctx(harness, cache))


@pytest.mark.parametrize(("kw", "size"), [
    ({"upscale_factor": 2.0}, (64, 64)),
    ({"target_width": 100, "target_height": 72}, (100, 72)),
    ({"target_width": 72}, (72, 72)),
    ({"upscale_enabled": False}, (32, 32)),
])
def test_output_is_exactly_the_target(model_cache, kw, size):
    result = refine(model_cache, **kw)
    assert output_image(result).size == size and (result.width, result.height) == size
    assert output_image(result).mode == "RGB" and result.provider == "diffusers"


def test_upscale_pass_uses_denoise_and_steps(model_cache):
    harness = Harness()
    result = refine(model_cache, harness, upscale_factor=2.0, upscale_denoise=0.5, upscale_steps=4)
    assert result.extra["upscale_steps"] == 4 and result.extra["upscale_denoise"] == 0.5
    lanczos = np.asarray(Image.fromarray(noise_image(32, 32, seed=1)).resize((64, 64), Image.LANCZOS))
    assert differs(decode(result), lanczos, 10)
    harness.assert_progress_complete()
    # A low denoise with few steps still runs one step (2 * 0.3 < 1: raised to 4 steps).
    assert refine(model_cache, upscale_denoise=0.3, upscale_steps=2).extra["upscale_steps"] == 4


def test_seeds(model_cache):
    a, b, c = (decode(refine(model_cache, seed=s, upscale_denoise=0.6)) for s in (1, 1, 2))
    assert np.array_equal(a, b) and differs(a, c, 5)


def test_alpha_is_kept(model_cache):
    rgba = np.dstack([noise_image(32, 32), np.full((32, 32), 255, np.uint8)])
    rgba[:, :16, 3] = 0
    out = decode(refine(model_cache, image=Image.fromarray(rgba, "RGBA"), upscale_factor=2.0))
    assert out.shape == (64, 64, 4)
    assert out[:, :24, 3].max() == 0 and out[:, 40:, 3].min() == 255


def test_face_pass_only_touches_face_boxes(model_cache):
    detector = FaceDetector("fixed", lambda rgb: [FACE])
    plain = decode(refine(model_cache, upscale_factor=2.0, upscale_denoise=0.0))
    harness = Harness()
    faced = refine(model_cache, harness, detector=detector, upscale_factor=2.0, upscale_denoise=0.0,
                   face_detail_enabled=True, face_detail_denoise=0.5, face_detail_steps=2,
                   face_detail_prompt="a sharp face")
    assert faced.extra["faces"] == 1 and faced.extra["face_detector"] == "fixed"
    x, y, w, h = faced.extra["face_boxes"][0]
    out = decode(faced)
    outside = np.ones((64, 64), bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(out[outside], plain[outside])
    assert differs(out[y:y + h, x:x + w], plain[y:y + h, x:x + w], 5)
    harness.assert_progress_complete()


def test_limits_and_provider_config(model_cache):
    with pytest.raises(InvalidInput, match="over the limit"):
        refine(model_cache, image=noise_image(2500, 2100), upscale_factor=4.0)
    with pytest.raises(InvalidInput, match="unknown key"):
        refine(model_cache, provider_config={"num_inference_steps": 3}, seed=None)


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=2)  # the first report is the resize
    with pytest.raises(TaskCancelled):
        refine(model_cache, harness, upscale_denoise=1.0, upscale_steps=2)
    assert harness.progress == [0.5, 0.75]
