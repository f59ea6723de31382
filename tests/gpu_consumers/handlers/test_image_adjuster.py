from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler
from schemas.enums import TaskType
from schemas.task_params import ImageAdjusterParams
from tests.gpu_consumers.handlers.support import Harness, decode

URL = "https://cdn.example/base.png"
PIXEL = (200, 100, 50)


def run(harness: Harness, image, **adjust):
    harness.add(URL, image)
    params = ImageAdjusterParams(base_image_url=URL, **adjust)
    return ImageAdjusterHandler().run(params, harness.ctx())


def one_pixel_image(pixel=PIXEL) -> np.ndarray:
    return np.tile(np.array(pixel, np.uint8), (8, 8, 1))


# Hand-computed on the pixel (200, 100, 50), in levels (x * 255):
@pytest.mark.parametrize(
    ("adjust", "expected"),
    [
        # 200*1.1, 100*1.1, 50*1.1
        ({"brightness": 0.1}, (220, 110, 55)),
        # (v - 127.5) * 1.5 + 127.5 = 236.25, 86.25, 11.25
        ({"contrast": 0.5}, (236, 86, 11)),
        # Y = .299*200 + .587*100 + .114*50 = 124.2 for every channel
        ({"saturation": -1.0}, (124, 124, 124)),
        # Y + (v - Y) * 1.5 = 237.9, 87.9, 12.9
        ({"saturation": 0.5}, (238, 88, 13)),
        # R * 1.1, B * 0.9
        ({"warmth": 0.5}, (220, 100, 45)),
        # R * 0.8, B * 1.2
        ({"warmth": -1.0}, (160, 100, 60)),
        # everything to black; contrast -1 gives mid-grey 127.5, rounded half to even: 128
        ({"brightness": -1.0}, (0, 0, 0)),
        ({"contrast": -1.0}, (128, 128, 128)),
        # brightness then contrast: (220, 110, 55) -> 266.25 (clipped to 255), 101.25, 18.75;
        # then warmth 0.5: 255 (clipped again), 101.25, 18.75 * 0.9 = 16.875
        ({"brightness": 0.1, "contrast": 0.5, "warmth": 0.5}, (255, 101, 17)),
        # clipping happens after each step: (400 -> 255, 200, 100), then
        # (v - 127.5) * .5 + 127.5 = 191.25, 163.75, 113.75
        ({"brightness": 1.0, "contrast": -0.5}, (191, 164, 114)),
    ],
)
def test_pixel_math_matches_hand_computed_values(harness, adjust, expected):
    result = run(harness, one_pixel_image(), **adjust)
    out = decode(result)
    assert out.shape == (8, 8, 3)
    assert np.all(out == np.array(expected, np.uint8)), out[0, 0]


def reference(rgb: np.ndarray, b=0.0, c=0.0, s=0.0, w=0.0) -> np.ndarray:
    """The documented formulas in float64, independent of the handler's code."""
    x = rgb.astype(np.float64) / 255.0
    x = np.clip(x * (1 + b), 0, 1)
    x = np.clip((x - 0.5) * (1 + c) + 0.5, 0, 1)
    y = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
    x = np.clip(y + (x - y) * (1 + s), 0, 1)
    x = np.clip(x * np.array([1 + 0.2 * w, 1.0, 1 - 0.2 * w]), 0, 1)
    return np.rint(x * 255)


@pytest.mark.parametrize(
    "adjust",
    [
        {"brightness": 0.3, "contrast": -0.2, "saturation": 0.4, "warmth": 0.1},
        {"brightness": -0.5, "contrast": 0.8, "saturation": -0.7, "warmth": -0.6},
        {"saturation": 1.0, "warmth": 1.0},
    ],
)
def test_random_images_follow_the_documented_formulas(harness, adjust):
    rgb = np.random.default_rng(7).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = decode(run(harness, rgb, **adjust)).astype(np.int16)
    keys = {"brightness": "b", "contrast": "c", "saturation": "s", "warmth": "w"}
    expected = reference(rgb, **{keys[k]: v for k, v in adjust.items()})
    # float32 vs float64 can only differ where a value sits on a rounding boundary.
    assert np.abs(out - expected).max() <= 1
    assert np.mean(out == expected) > 0.99


@settings(max_examples=25, deadline=None)
@given(
    rgb=arrays(np.uint8, st.tuples(st.integers(8, 12), st.integers(8, 12), st.just(3))),
    zero=st.sampled_from([0.0, None, -0.0]),
)
def test_zero_parameters_return_the_input_pixels_exactly(rgb, zero):
    harness = Harness()
    result = run(harness, rgb, brightness=zero, contrast=zero, saturation=zero, warmth=zero)
    assert np.array_equal(decode(result), rgb)


def test_all_zero_output_bytes_are_those_of_the_input_encoded(harness):
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    first = run(harness, rgb, brightness=0.0)
    second = run(Harness(), rgb)
    assert first.outputs[0].data == second.outputs[0].data
    assert first.outputs[0].data.startswith(b"\x89PNG")


def test_alpha_channel_is_preserved(harness):
    rgba = np.random.default_rng(2).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    out = decode(run(harness, Image.fromarray(rgba, "RGBA"), brightness=0.2, warmth=-0.3))
    assert out.shape == (10, 12, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert not np.array_equal(out[..., :3], rgba[..., :3])


def test_deterministic_bytes_and_result_fields(harness):
    rgb = np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    a = run(harness, rgb, contrast=0.3)
    b = run(Harness(), rgb, contrast=0.3)
    assert a.outputs[0].data == b.outputs[0].data
    assert (a.provider, a.model, a.seed) == ("classical", "numpy-color-adjust", None)
    assert (a.width, a.height) == (12, 12)
    assert a.outputs[0].content_type == "image/png" and a.outputs[0].suffix == ".png"
    assert a.extra == {"applied": {"contrast": 0.3}, "prompt": None}
    assert ImageAdjusterHandler.task_type is TaskType.IMAGE_ADJUSTER


def test_the_guidance_is_read_by_the_rules_and_added_to_the_explicit_values(harness):
    rgb = np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    guided = run(harness, rgb, contrast=0.3, prompt="a bit punchier")
    # "punchier" is +0.2 contrast, "a bit" halves it: 0.3 + 0.1
    assert guided.model == "numpy-color-adjust+keywords" and guided.provider == "classical"
    assert guided.extra["applied"] == {"contrast": 0.4}
    assert guided.extra["guidance"] == {"decided_by": "keywords", "values": {"contrast": 0.1},
                                        "matched": ["punchier"]}
    assert np.array_equal(decode(guided), decode(run(Harness(), rgb, contrast=0.4)))


def test_guidance_the_rules_cannot_read_is_invalid_input_not_ignored(harness):
    with pytest.raises(InvalidInput, match="no adjustment found"):
        run(harness, one_pixel_image(), brightness=0.1, prompt="make it look nice")


def test_progress_is_monotonic_and_ends_at_one(harness):
    run(harness, one_pixel_image(), brightness=0.1, contrast=0.1, saturation=0.1, warmth=0.1)
    harness.assert_progress_complete()
    assert len(harness.progress) == 5  # four adjustments and the encoding


def test_cancel_between_steps_raises(harness):
    harness.cancel_after = 1
    with pytest.raises(TaskCancelled):
        run(harness, one_pixel_image(), brightness=0.1, contrast=0.1)
    assert harness.progress == [1 / 3]


def test_cancelled_before_start_does_no_work(harness):
    harness.cancel.cancel()
    with pytest.raises(TaskCancelled):
        run(harness, one_pixel_image(), brightness=0.1)
    assert harness.progress == []


def test_image_smaller_than_8x8_is_invalid_input(harness):
    with pytest.raises(InvalidInput, match="7x8"):
        run(harness, np.zeros((8, 7, 3), np.uint8), brightness=0.1)
