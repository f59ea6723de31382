"""The warm model cache: load once, derive with from_pipe, LoRA LRU, IP-Adapter, low memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    model_cache,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness


def image_of(pipe, seed=0, **kwargs) -> np.ndarray:
    return np.asarray(pipe(prompt="a red bottle", num_inference_steps=2, height=64, width=64,
                           output_type="np", generator=torch.Generator().manual_seed(seed),
                           **kwargs).images)


def test_models_load_once_and_derived_pipelines_share_weights(model_cache):
    base = model_cache.text_to_image()
    assert model_cache.text_to_image() is base
    img2img, inpaint = model_cache.img2img(), model_cache.inpaint_from_base()
    assert model_cache.img2img() is img2img
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert img2img.unet is base.unet and inpaint.vae is base.vae
    dedicated = model_cache.inpaint()
    assert dedicated.unet is not base.unet and dedicated.unet.config.in_channels == 9
    assert model_cache.segmentation() is model_cache.segmentation()
    assert model_cache.llm()[0] is model_cache.llm()[0]
    assert model_cache.model_id(Role.TEXT_TO_IMAGE).startswith("offline:text_to_image-")
    assert model_cache.default_steps(Role.TEXT_TO_IMAGE) == 2


def test_lora_lru_bound_and_errors(model_cache):
    cache = ModelCache(model_cache.registry, lora_capacity=2)
    pipe = cache.text_to_image()
    baseline = image_of(pipe)
    for name in ("subject", "product", "style"):
        switch = cache.apply_loras(pipe, {name: 1.0})
        assert switch.names == (name,) and switch.switch_ms < 50
    assert cache.loaded_loras(pipe) == ["product", "style"]
    assert sorted(pipe.get_list_adapters()["unet"]) == ["product", "style"]
    cache.apply_loras(pipe, {"product": 0.5})  # product becomes the most recently used
    cache.apply_loras(pipe, {"subject": 1.0})
    assert cache.loaded_loras(pipe) == ["product", "subject"]
    assert not np.array_equal(image_of(pipe), baseline)
    cache.apply_loras(pipe, {"subject": 0.0, "style": None})
    assert np.array_equal(image_of(pipe), baseline)
    with pytest.raises(InvalidInput, match="no LoRA is configured for face"):
        cache.apply_loras(pipe, {"face": 1.0})
    with pytest.raises(InvalidInput, match="at most 2"):
        cache.apply_loras(pipe, {"subject": 1.0, "product": 1.0, "style": 1.0})


def test_ip_adapter_reaches_pipelines_derived_before_it_loaded(model_cache):
    cache = ModelCache(model_cache.registry)
    base, img2img = cache.text_to_image(), cache.img2img()
    source = Image.fromarray(noise_image(64, 64))

    def run_img2img(**kwargs):
        return np.asarray(img2img(prompt="x", image=source, strength=0.8, num_inference_steps=2,
                                  output_type="np", generator=torch.Generator().manual_seed(0),
                                  **kwargs).images)

    plain = run_img2img(**cache.prepare(img2img))
    reference = Image.fromarray(noise_image(32, 32, seed=5))
    guided_kwargs = cache.prepare(base, reference=reference, reference_scale=1.0)
    assert guided_kwargs["ip_adapter_image"] is reference
    assert img2img.image_encoder is base.image_encoder is not None
    assert not np.array_equal(run_img2img(**guided_kwargs), plain)
    # No reference: scale 0 with a placeholder image gives exactly the no-adapter output.
    assert np.array_equal(run_img2img(**cache.prepare(img2img)), plain)


def test_low_memory_turns_vae_tiling_on_for_one_task(model_cache):
    pipe = model_cache.text_to_image()
    model_cache.prepare(pipe, low_memory=True)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    model_cache.prepare(pipe)
    assert not pipe.vae.use_tiling and not pipe.vae.use_slicing
    video = model_cache.image_to_video()
    assert model_cache.prepare(video, low_memory=True) == {}  # no tiling there: nothing to do


def test_for_context(model_cache):
    ctx = Harness().ctx()
    assert ModelCache.for_context(dataclasses.replace(ctx, models=model_cache)) is model_cache
    adopted = ModelCache.for_context(dataclasses.replace(ctx, models=model_cache.registry))
    assert ModelCache.for_context(dataclasses.replace(ctx, models=model_cache.registry)) is adopted
