from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.background_fix import ClassicalBackgroundFix, cover, expand
from schemas.enums import TaskType
from schemas.task_params import BackgroundFixParams
from tests.gpu_consumers.handlers.support import Harness, decode, output_image, subject_on_plain

BASE = "https://cdn.example/look.png"
BACKDROP = "https://cdn.example/beach.png"
BLUE = (20, 60, 200)


def run(harness: Harness, base, backdrop=None, **kw):
    harness.add(BASE, base)
    if backdrop is not None:
        harness.add(BACKDROP, backdrop)
        kw.setdefault("background_image_url", BACKDROP)
    return ClassicalBackgroundFix().run(BackgroundFixParams(base_image_url=BASE, **kw), harness.ctx())


def plain(color, height=40, width=50) -> np.ndarray:
    return np.tile(np.array(color, np.uint8), (height, width, 1))


def test_background_is_replaced_and_the_subject_kept(harness):
    base = subject_on_plain((96, 128))
    result = run(harness, base, plain(BLUE), blend_strength=0.0)
    out = decode(result)
    assert out.shape == (96, 128, 3) and output_image(result).mode == "RGB"
    # Outside the subject: the new background, exactly (a plain backdrop survives any resize).
    assert np.all(out[:10] == BLUE) and np.all(out[:, :30] == BLUE) and np.all(out[:, -30:] == BLUE)
    # Inside the subject (rows 24..72, columns 48..80): the base pixels, exactly.
    assert np.array_equal(out[28:68, 52:76], base[28:68, 52:76])
    assert (result.provider, result.model, result.width, result.height) == (
        "classical", "opencv-grabcut-composite", 128, 96)
    assert ClassicalBackgroundFix.task_type is TaskType.BACKGROUND_FIX


def test_mask_expansion_keeps_a_rim_of_the_original(harness):
    base = subject_on_plain((96, 128))
    tight = decode(run(harness, base, plain(BLUE), blend_strength=0.0))
    grown = decode(run(Harness(), base, plain(BLUE), blend_strength=0.0, mask_expansion=12))
    rim = (slice(40, 56), slice(40, 44))  # 4-8 px left of the subject (it starts at column 48)
    assert np.all(tight[rim] == BLUE)
    assert np.array_equal(grown[rim], base[rim])


def test_blend_strength_feathers_the_edge(harness):
    base = subject_on_plain((96, 128))
    hard = decode(run(harness, base, plain(BLUE), blend_strength=0.0)).astype(int)
    soft = decode(run(Harness(), base, plain(BLUE), blend_strength=1.0)).astype(int)
    # Just outside the subject a feathered edge mixes subject colour into the backdrop.
    assert np.any(soft[40:56, 44:48] != hard[40:56, 44:48])
    assert np.array_equal(soft[:5], hard[:5]), "far from the subject both are pure backdrop"


def test_background_is_scaled_to_cover_not_stretched():
    striped = np.zeros((10, 40, 3), np.uint8)
    striped[:, :10] = (255, 0, 0)  # a red band at the left, cropped away when covering 30x30
    striped[:, 10:30] = (0, 255, 0)
    striped[:, 30:] = (0, 0, 255)
    covered = cover(striped, 30, 30)
    assert covered.shape == (30, 30, 3)
    assert covered[:, 12:18, 1].min() > 200 and covered[:, :, 0].max() < 200


def test_expand_grows_by_the_given_distance():
    alpha = np.zeros((21, 21), np.float32)
    alpha[10, 10] = 1.0
    grown = expand(alpha, 3)
    assert grown[10, 13] == 1.0 and grown[10, 14] == 0.0 and grown[7, 10] == 1.0
    assert np.array_equal(expand(alpha, 0), alpha)


def test_prompt_only_needs_the_diffusers_provider(harness):
    with pytest.raises(InvalidInput, match="background_prompt needs the diffusers provider"):
        run(harness, subject_on_plain((32, 32)), background_prompt="white studio")
    with pytest.raises(InvalidInput, match="needs background_image_url"):
        run(harness, subject_on_plain((32, 32)))
    assert harness.images and not harness.progress


def test_prompt_with_an_image_uses_the_image_and_records_the_prompt(harness):
    result = run(harness, subject_on_plain((48, 64)), plain(BLUE), background_prompt="white studio")
    assert result.extra["background_prompt"] == "white studio"


def test_unusable_background_image_is_invalid_input(harness):
    with pytest.raises(InvalidInput, match="background_image_url: image is 4x4"):
        run(harness, subject_on_plain((48, 64)), plain(BLUE, 4, 4))


def test_progress_cancellation_and_determinism(harness):
    base, backdrop = subject_on_plain((48, 64)), Image.fromarray(plain(BLUE))
    first = run(harness, base, backdrop)
    harness.assert_progress_complete()
    assert first.outputs[0].data == run(Harness(), base, backdrop).outputs[0].data
    cancelling = Harness(cancel_after=3)
    with pytest.raises(TaskCancelled):
        run(cancelling, base, backdrop)
    assert len(cancelling.progress) == 3
