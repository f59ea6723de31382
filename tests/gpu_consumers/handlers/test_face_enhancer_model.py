from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import TaskCancelled
from gpu_consumers.handlers.face_detection import FaceDetector
from gpu_consumers.handlers.face_enhancer import IDENTITY_MAX_STRENGTH, DiffusersFaceEnhancer
from schemas.task_params import FaceEnhancerParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, face_on_backdrop, output_image

URL = "file:///inputs/portrait.png"
FACES = [(10, 12, 24, 30), (60, 20, 20, 24)]


def enhance(cache, harness: Harness | None = None, faces=FACES, image=None, seed=0, **kw):
    harness = harness or Harness()
    harness.add(URL, face_on_backdrop((64, 96), centre=(24, 30)) if image is None else image)
    params = FaceEnhancerParams(base_image_url=URL, provider_config={"seed": seed}, **kw)
    handler = DiffusersFaceEnhancer(face_detector=FaceDetector("fixed", lambda rgb: list(faces)))
    return handler.run(params, model_ctx(harness, cache))


def test_only_face_boxes_change(model_cache):
    harness = Harness()
    result = enhance(model_cache, harness, strength=0.8, preserve_identity=False, prompt="a face")
    out, base = decode(result), face_on_backdrop((64, 96), centre=(24, 30))
    assert output_image(result).size == (96, 64) and result.extra["faces"] == 2
    assert result.extra["strength"] == 0.8
    outside = np.ones(base.shape[:2], bool)
    for x, y, w, h in result.extra["face_boxes"]:
        outside[y:y + h, x:x + w] = False
        assert differs(out[y:y + h, x:x + w], base[y:y + h, x:x + w], 5)
    assert np.array_equal(out[outside], base[outside])
    harness.assert_progress_complete()
    assert len(harness.progress) == 1 + 2 * 1 + 1  # detection, one step per face (2 * 0.8), done


def test_preserve_identity_caps_the_strength(model_cache):
    capped = enhance(model_cache, strength=0.9)  # preserve_identity defaults to True
    assert capped.extra["strength"] == IDENTITY_MAX_STRENGTH and capped.extra["preserve_identity"]
    assert enhance(model_cache, strength=0.2).extra["strength"] == 0.2


def test_seeds(model_cache):
    a, b, c = (decode(enhance(model_cache, seed=s, strength=0.8, preserve_identity=False))
               for s in (1, 1, 2))
    assert np.array_equal(a, b) and differs(a, c, 5)


def test_no_face_returns_the_input_and_keeps_alpha(model_cache):
    rgba = np.dstack([face_on_backdrop((64, 96)), np.full((64, 96), 200, np.uint8)])
    result = enhance(model_cache, faces=[], image=Image.fromarray(rgba, "RGBA"))
    assert result.extra["faces"] == 0
    assert np.array_equal(decode(result), rgba)


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=2)  # the first report is the detection
    with pytest.raises(TaskCancelled):
        enhance(model_cache, harness, strength=1.0, preserve_identity=False)
    assert len(harness.progress) == 2
