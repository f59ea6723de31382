from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.background_remove import TransformersBackgroundRemove
from schemas.task_params import BackgroundRemoveParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    model_cache,
    model_ctx,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image, subject_on_plain

URL = "file:///inputs/shot.png"


def remove(cache, image=None, harness: Harness | None = None, **kw):
    harness = harness or Harness()
    harness.add(URL, subject_on_plain((60, 80)) if image is None else image)
    return TransformersBackgroundRemove().run(BackgroundRemoveParams(image_url=URL, **kw),
                                              model_ctx(harness, cache))


@pytest.mark.parametrize(("fmt", "pil_format"), [(None, "PNG"), ("png", "PNG"), ("webp", "WEBP")])
def test_rgba_output_of_the_input_size(model_cache, fmt, pil_format):
    harness = Harness()
    result = remove(model_cache, harness=harness, output_format=fmt)
    image = output_image(result)
    assert image.format == pil_format and image.mode == "RGBA" and image.size == (80, 60)
    assert result.provider == "transformers" and result.model.startswith("offline:segmentation-")
    out = decode(result)
    assert np.array_equal(out[..., :3], subject_on_plain((60, 80)))  # colour untouched
    assert 0 < out[..., 3].mean() < 255  # a real matte, neither empty nor full
    harness.assert_progress_complete()


def test_deterministic_and_input_alpha_is_kept(model_cache):
    assert np.array_equal(decode(remove(model_cache)), decode(remove(model_cache)))
    rgba = np.dstack([subject_on_plain((60, 80)), np.full((60, 80), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    out = decode(remove(model_cache, image=Image.fromarray(rgba, "RGBA")))
    assert out[:, :10, 3].max() == 0


def test_provider_config_is_refused(model_cache):
    with pytest.raises(InvalidInput, match="unknown key"):
        remove(model_cache, provider_config={"threshold": 0.5})
