"""IMAGE_ADJUSTER's ``transformers`` provider end to end with the real (tiny, random-weight)
language model, loaded through the registry's from_pretrained path as LLM_INTERACTION loads it."""

from __future__ import annotations

import numpy as np

from gpu_consumers.handlers.image_adjuster import TransformersImageAdjuster
from schemas.task_params import ImageAdjusterParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    model_cache,
    model_ctx,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode

URL = "https://cdn.example/base.png"


def test_the_tiny_model_reads_the_guidance_and_the_image_follows_it(model_cache):
    rgb = np.random.default_rng(9).integers(40, 200, (16, 16, 3), dtype=np.uint8)
    harness = Harness()
    harness.add(URL, rgb)
    params = ImageAdjusterParams(base_image_url=URL, prompt="much brighter")
    result = TransformersImageAdjuster().run(params, model_ctx(harness, model_cache))
    guidance = result.extra["guidance"]
    # The model ran and its answer is recorded; random weights do not write the JSON asked for,
    # so the rules decided, and the metadata says which path that was.
    assert guidance["llm_model"].startswith("offline:llm-") and isinstance(guidance["llm_answer"], str)
    assert guidance["decided_by"] == "keywords" and guidance["llm_unusable"]
    assert result.model == "numpy-color-adjust+keywords" and result.provider == "transformers"
    assert result.extra["applied"] == {"brightness": 0.4}
    assert decode(result).astype(float).mean() > rgb.mean() + 20
    harness.assert_progress_complete()
    again = Harness()
    again.add(URL, rgb)  # greedy decoding: the same guidance gives the same answer
    assert TransformersImageAdjuster().run(params, model_ctx(again, model_cache)).extra["guidance"] == guidance
