from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.face_detection import FaceDetector
from gpu_consumers.handlers.refine import ClassicalRefine, output_size, sharpen_iterations
from schemas.task_params import RefineParams
from tests.gpu_consumers.handlers.support import Harness, decode, output_image

URL = "file:///inputs/gen.png"


def textured(height: int = 30, width: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(blocks.resize((width, height)))
    return np.clip(base.astype(np.int16) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def run(harness: Harness, image, handler: ClassicalRefine | None = None, **kw):
    harness.add(URL, image)
    return (handler or ClassicalRefine()).run(RefineParams(base_image_url=URL, **kw), harness.ctx())


@pytest.mark.parametrize(
    ("kw", "size"),
    [
        ({"upscale_factor": 2.0}, (80, 60)),
        ({"upscale_factor": 1.5}, (60, 45)),
        ({"upscale_factor": 3.3}, (132, 99)),
        ({}, (80, 60)),  # the default factor is 2
        ({"target_width": 100, "target_height": 64}, (100, 64)),  # both: exact, aspect not kept
        ({"target_width": 100, "target_height": 64, "upscale_factor": 4.0}, (100, 64)),  # targets win
        ({"target_width": 100}, (100, 75)),  # one side: aspect kept
        ({"target_height": 90}, (120, 90)),
        ({"target_width": 64, "upscale_enabled": True}, (64, 48)),
        ({"upscale_enabled": False, "target_width": 100, "upscale_factor": 3.0}, (40, 30)),
    ],
)
def test_output_size_is_exactly_what_was_asked(harness, kw, size):
    result = run(harness, textured(), **kw)
    assert output_image(result).size == size
    assert (result.width, result.height) == size
    assert output_size(RefineParams(base_image_url=URL, **kw), 40, 30) == size


def test_disabled_upscale_lists_what_it_ignored(harness):
    result = run(harness, textured(), upscale_enabled=False, target_width=100, upscale_denoise=0.5)
    assert result.extra["ignored"] == ["target_width", "upscale_denoise"]
    assert result.extra["sharpen_iterations"] == 0
    assert np.array_equal(decode(result), textured()), "nothing asked: nothing changed"


def test_steps_map_onto_capped_sharpen_iterations():
    assert [sharpen_iterations(s) for s in (None, 1, 10, 11, 20, 50, 150)] == [1, 1, 1, 2, 2, 5, 5]


def test_sharpening_and_denoising_are_applied(harness):
    image = textured()
    plain = decode(run(harness, image, upscale_factor=2.0, upscale_steps=1)).astype(np.float32)
    sharper = decode(run(Harness(), image, upscale_factor=2.0, upscale_steps=50)).astype(np.float32)
    denoised = decode(run(Harness(), image, upscale_factor=2.0, upscale_steps=1, upscale_denoise=1.0))
    assert np.abs(np.diff(sharper, axis=1)).mean() > np.abs(np.diff(plain, axis=1)).mean()
    assert np.abs(np.diff(denoised.astype(np.float32), axis=1)).mean() < np.abs(np.diff(plain, axis=1)).mean()


def test_alpha_is_resized_with_the_image(harness):
    rgba = np.dstack([textured(), np.full((30, 40), 255, np.uint8)])
    rgba[:, :20, 3] = 0
    out = decode(run(harness, Image.fromarray(rgba, "RGBA"), target_width=80))
    assert out.shape == (60, 80, 4)
    assert out[:, :30, 3].max() == 0 and out[:, 50:, 3].min() == 255


def test_output_over_the_refine_limit_is_invalid_input(harness):
    with pytest.raises(InvalidInput, match="over the limit"):
        run(harness, textured(2500, 2100), upscale_factor=4.0)


def test_face_detail_touches_only_the_face_boxes(harness):
    box = (30, 20, 24, 28)  # x, y, w, h on the 80 x 60 output
    calls = []

    def fixed(rgb):
        calls.append(rgb.shape)
        return [box]

    handler = ClassicalRefine(face_detector=FaceDetector("fixed", fixed))
    image = textured()
    without = decode(run(harness, image, target_width=80))
    result = run(Harness(), image, handler=handler, target_width=80, face_detail_enabled=True,
                 face_detail_steps=30, face_detail_denoise=0.6)
    with_faces = decode(result)
    assert calls == [(60, 80, 3)], "faces are looked for on the upscaled image"
    assert result.extra["faces"] == 1 and result.extra["face_detector"] == "fixed"
    x, y, w, h = result.extra["face_boxes"][0]
    assert x <= box[0] and y <= box[1] and x + w >= box[0] + box[2] and y + h >= box[1] + box[3]
    inside = np.zeros(without.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    changed = np.any(with_faces != without, axis=2)
    assert changed[inside].any()
    assert not changed[~inside].any()


def test_face_detail_with_the_default_detector_records_it(harness):
    result = run(harness, textured(), upscale_enabled=False, face_detail_enabled=True)
    assert result.extra["faces"] == 0 and isinstance(result.extra["face_detector"], str)
    assert np.array_equal(decode(result), textured())


def test_progress_and_cancellation(harness):
    run(harness, textured(), upscale_factor=2.0, upscale_steps=30, upscale_denoise=0.2)
    harness.assert_progress_complete()
    assert len(harness.progress) == 6  # denoise, resize, 3 sharpen iterations, encode
    cancelling = Harness(cancel_after=2)
    with pytest.raises(TaskCancelled):
        run(cancelling, textured(), upscale_factor=2.0, upscale_steps=30, upscale_denoise=0.2)
    assert cancelling.progress == [1 / 6, 2 / 6]
