from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from gpu_consumers.errors import TaskCancelled
from gpu_consumers.handlers.detail_enhancer import ClassicalDetailEnhancer
from schemas.enums import TaskType
from schemas.task_params import DetailEnhancerParams
from tests.gpu_consumers.handlers.support import Harness, decode

URL = "https://cdn.example/soft.png"


def soft_image(size: int = 64) -> np.ndarray:
    """Stripes and a disc, then blurred: detail for the enhancer to bring back."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, ::6] = (200, 180, 160)
    image[:, 1::6] = (200, 180, 160)
    cv2.circle(image, (size // 2, size // 2), size // 4, (60, 120, 200), -1)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))


def sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def run(harness: Harness, image, **kw):
    harness.add(URL, image)
    return ClassicalDetailEnhancer().run(DetailEnhancerParams(base_image_url=URL, **kw), harness.ctx())


def test_sharpness_increases_with_strength(harness):
    image = soft_image()
    scores = [sharpness(decode(run(Harness(), image, strength=s))) for s in (0.25, 0.5, 1.0)]
    assert sharpness(image) < scores[0] < scores[1] < scores[2]


def test_preserve_original_bounds_the_change(harness):
    image = soft_image()
    free = decode(run(harness, image, strength=1.0)).astype(int)
    kept = decode(run(Harness(), image, strength=1.0, preserve_original=True)).astype(int)
    assert np.abs(free - image).max() > 16
    assert np.abs(kept - image).max() <= 16
    assert sharpness(image) < sharpness(kept.astype(np.uint8)) < sharpness(free.astype(np.uint8))


def test_zero_strength_returns_the_input_exactly(harness):
    image = soft_image(32)
    result = run(harness, image, strength=0.0)
    assert np.array_equal(decode(result), image)
    harness.assert_progress_complete()


def test_default_strength_alpha_and_result_fields(harness):
    rgba = np.dstack([soft_image(32), np.linspace(0, 255, 32 * 32).reshape(32, 32).astype(np.uint8)])
    result = run(harness, Image.fromarray(rgba, "RGBA"), prompt="crisper fabric")
    out = decode(result)
    assert out.shape == (32, 32, 4) and np.array_equal(out[..., 3], rgba[..., 3])
    assert result.extra == {"strength": 0.5, "preserve_original": False, "prompt": "crisper fabric"}
    assert (result.provider, result.model, result.seed, result.width, result.height) == (
        "classical", "opencv-clahe-unsharp", None, 32, 32)
    assert ClassicalDetailEnhancer.task_type is TaskType.DETAIL_ENHANCER
    assert run(Harness(), Image.fromarray(rgba, "RGBA")).outputs[0].data == result.outputs[0].data


def test_progress_and_cancellation(harness):
    run(harness, soft_image(32), strength=0.6)
    harness.assert_progress_complete()
    assert harness.progress == [0.25, 0.5, 0.75, 1.0]
    cancelling = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        run(cancelling, soft_image(32), strength=0.6)
    assert cancelling.progress == [0.25]
