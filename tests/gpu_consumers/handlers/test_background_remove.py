from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.background_remove import ClassicalBackgroundRemove
from schemas.enums import TaskType
from schemas.task_params import BackgroundRemoveParams
from tests.gpu_consumers.handlers.support import Harness, decode, output_image, subject_on_plain

URL = "s3://inputs/look.png"


def run(harness: Harness, image, **kw):
    harness.add(URL, image)
    return ClassicalBackgroundRemove().run(BackgroundRemoveParams(image_url=URL, **kw), harness.ctx())


def assert_cut_out(rgba: np.ndarray, rgb: np.ndarray) -> None:
    height, width = rgba.shape[:2]
    alpha = rgba[..., 3]
    border = np.concatenate([alpha[:4].ravel(), alpha[-4:].ravel(),
                             alpha[:, :4].ravel(), alpha[:, -4:].ravel()])
    assert border.max() == 0, "the studio background must be transparent"
    # The subject occupies rows h/4..3h/4 and columns 3w/8..5w/8; well inside it is opaque.
    m = max(3, width // 60)  # the anti-aliased edge is about one work-size pixel wide
    inner = alpha[height // 4 + m: 3 * height // 4 - m, 3 * width // 8 + m: 5 * width // 8 - m]
    assert inner.min() == 255
    assert alpha[height // 2, width // 2] == 255
    assert np.array_equal(rgba[..., :3], rgb), "colour is kept; only alpha is added"


def test_png_with_transparent_border_and_opaque_subject(harness):
    rgb = subject_on_plain((96, 128))
    result = run(harness, rgb)
    image = output_image(result)
    assert image.format == "PNG" and image.mode == "RGBA"
    assert_cut_out(np.asarray(image), rgb)
    assert result.outputs[0].content_type == "image/png"
    assert (result.provider, result.model) == ("classical", "opencv-grabcut")
    assert (result.width, result.height) == (128, 96)
    assert 0.1 < result.extra["foreground_fraction"] < 0.16  # the subject is an eighth of the frame
    assert ClassicalBackgroundRemove.task_type is TaskType.BACKGROUND_REMOVE


def test_webp_is_lossless_when_asked(harness):
    rgb = subject_on_plain((96, 128), seed=1)
    result = run(harness, rgb, output_format="webp")
    image = output_image(result)
    assert image.format == "WEBP" and image.mode == "RGBA"
    assert (result.outputs[0].content_type, result.outputs[0].suffix) == ("image/webp", ".webp")
    png = decode(run(Harness(), rgb, output_format="png"))
    assert np.array_equal(np.asarray(image), png), "lossless WebP holds the same pixels as the PNG"


def test_large_input_is_segmented_on_a_smaller_copy_at_full_output_size(harness):
    rgb = np.asarray(Image.fromarray(subject_on_plain((96, 128), seed=2)).resize((800, 600), Image.NEAREST))
    rgba = decode(run(harness, rgb))
    assert rgba.shape == (600, 800, 4)
    assert_cut_out(rgba, rgb)


def test_existing_alpha_is_respected(harness):
    rgb = subject_on_plain((96, 128), seed=3)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, 64:] = 100  # the right half was already half transparent
    rgba = decode(run(harness, Image.fromarray(np.dstack([rgb, alpha]), "RGBA")))
    assert rgba[48, 60, 3] == 255 and rgba[48, 66, 3] <= 100


def test_same_image_gives_the_same_bytes(harness):
    rgb = subject_on_plain((64, 64), seed=4)
    assert run(harness, rgb).outputs[0].data == run(Harness(), rgb).outputs[0].data


def test_progress_and_cancellation(harness):
    run(harness, subject_on_plain((64, 64)))
    harness.assert_progress_complete()
    cancelling = Harness(cancel_after=2)
    with pytest.raises(TaskCancelled):
        run(cancelling, subject_on_plain((64, 64)))
    assert len(cancelling.progress) == 2


def test_tiny_image_is_invalid_input(harness):
    with pytest.raises(InvalidInput, match="at least 8x8"):
        run(harness, np.zeros((5, 30, 3), np.uint8))
