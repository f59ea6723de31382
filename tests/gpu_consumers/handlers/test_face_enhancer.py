from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import TaskCancelled
from gpu_consumers.handlers.face_detection import FaceDetector, default_face_detector, detect_skin_faces
from gpu_consumers.handlers.face_enhancer import ClassicalFaceEnhancer
from schemas.enums import TaskType
from schemas.task_params import FaceEnhancerParams
from tests.gpu_consumers.handlers.support import Harness, decode, face_on_backdrop

URL = "https://cdn.example/portrait.png"


def run(harness: Harness, image, detector: FaceDetector | None = None, **kw):
    harness.add(URL, image)
    handler = ClassicalFaceEnhancer(face_detector=detector)
    return handler.run(FaceEnhancerParams(base_image_url=URL, **kw), harness.ctx())


def changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def inside_boxes(shape, boxes) -> np.ndarray:
    inside = np.zeros(shape[:2], bool)
    for x, y, w, h in boxes:
        inside[y:y + h, x:x + w] = True
    return inside


def test_synthetic_face_is_found_and_only_its_region_changes(harness):
    image = face_on_backdrop()
    result = run(harness, image, strength=1.0)  # the default detector
    out = decode(result)
    assert result.extra["faces"] == 1
    assert result.extra["face_detector"] == default_face_detector().name
    boxes = result.extra["face_boxes"]
    x, y, w, h = boxes[0]
    assert x <= 80 - 22 and x + w >= 80 + 22 and y <= 60 - 30 and y + h >= 60 + 30, "covers the oval"
    changed = changed_mask(image, out)
    assert changed[inside_boxes(image.shape, boxes)].mean() > 0.3
    assert not changed[~inside_boxes(image.shape, boxes)].any()
    # Bilateral smoothing evens out the skin noise in the cheek.
    cheek = (slice(62, 70), slice(64, 72))
    assert out[cheek].astype(float).std() < image[cheek].astype(float).std()


def test_skin_detector_finds_two_faces_and_ignores_plain_skin_patches():
    image = face_on_backdrop((120, 240), centre=(60, 60))
    image[:, 120:] = face_on_backdrop((120, 120), centre=(60, 60), seed=1)
    patch = image.copy()
    patch[10:100, 140:200] = (224, 172, 140)  # a skin-coloured patch with no eyes or mouth
    assert len(detect_skin_faces(image)) == 2
    assert len(detect_skin_faces(patch)) == 1


def test_injected_detector_region_logic(harness):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    seen = []

    def fixed(rgb):
        seen.append(rgb.shape)
        return [(10, 12, 20, 20), (50, 30, 16, 20)]

    result = run(harness, image, FaceDetector("fixed", fixed), strength=0.8, preserve_identity=False)
    out = decode(result)
    assert seen == [(64, 80, 3)]
    assert result.extra["faces"] == 2 and result.extra["face_detector"] == "fixed"
    # Each box is grown by 15% per side (3 px for a 20 px box), clipped to the image.
    assert result.extra["face_boxes"] == [[7, 9, 26, 26], [48, 27, 20, 26]]
    inside = inside_boxes(image.shape, result.extra["face_boxes"])
    changed = changed_mask(image, out)
    assert changed[inside].any() and not changed[~inside].any()


def test_no_face_leaves_the_image_unchanged(harness):
    image = np.zeros((40, 50, 3), np.uint8)
    image[...] = (30, 120, 60)
    result = run(harness, image, strength=1.0)
    assert result.extra["faces"] == 0 and result.extra["face_boxes"] == []
    assert np.array_equal(decode(result), image)
    harness.assert_progress_complete()


def test_preserve_identity_limits_the_change_per_pixel(harness):
    image = np.random.default_rng(6).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    detector = FaceDetector("fixed", lambda rgb: [(8, 8, 32, 32)])
    for strength in (1.0, 0.5):
        kept = decode(run(Harness(), image, detector, strength=strength, preserve_identity=True))
        free = decode(run(Harness(), image, detector, strength=strength, preserve_identity=False))
        delta_kept = np.abs(kept.astype(int) - image).max()
        assert delta_kept <= 0.10 * 255 * strength + 1  # +1: rounding of the feathered delta
        assert np.abs(free.astype(int) - image).max() > delta_kept


def test_zero_strength_changes_nothing_and_alpha_is_kept(harness):
    rgba = np.dstack([face_on_backdrop(), np.full((120, 160), 200, np.uint8)])
    out = decode(run(harness, Image.fromarray(rgba, "RGBA"), strength=0.0))
    assert np.array_equal(out, rgba)
    out = decode(run(Harness(), Image.fromarray(rgba, "RGBA"), strength=0.7))
    assert out.shape == (120, 160, 4) and np.all(out[..., 3] == 200)


def test_result_fields_progress_and_cancellation(harness):
    detector = FaceDetector("fixed", lambda rgb: [(4, 4, 10, 10), (20, 20, 10, 10)])
    image = np.random.default_rng(8).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    result = run(harness, image, detector, prompt="natural skin")
    assert (result.provider, result.model) == ("classical", "opencv-bilateral-detail")
    assert (result.width, result.height) == (40, 40)
    assert result.extra["prompt"] == "natural skin" and result.extra["strength"] == 0.5
    assert result.extra["preserve_identity"] is True
    assert ClassicalFaceEnhancer.task_type is TaskType.FACE_ENHANCER
    harness.assert_progress_complete()
    assert len(harness.progress) == 4  # detection, two faces, encoding
    cancelling = Harness(cancel_after=2)
    with pytest.raises(TaskCancelled):
        run(cancelling, image, detector)
    assert cancelling.progress == [0.25, 0.5]
