"""Tiny SD-family models: text-to-image, img2img/inpaint via from_pipe, LoRA, IP-Adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.models import LORA_ADAPTERS, Role

STEPS = 2


def generate(pipe, seed=0, size=32, **kwargs) -> np.ndarray:
    out = pipe(prompt=kwargs.pop("prompt", "a photo of a red bottle on marble"),
               num_inference_steps=STEPS, height=size, width=size, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return np.asarray(out.images)


@pytest.fixture(scope="session")
def reference_image() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8"), "RGB")


@pytest.fixture(scope="session")
def square_mask() -> Image.Image:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    return mask


def test_text_to_image_round_trip_and_sizes(registry, sd_pipe):
    folder = Path(registry.path_for(Role.TEXT_TO_IMAGE))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert type(sd_pipe).__name__ == "StableDiffusionPipeline"
    for size in (32, 64):
        images = generate(sd_pipe, size=size)
        assert images.shape == (1, size, size, 3)
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    pil = sd_pipe(prompt="x", num_inference_steps=STEPS, height=32, width=48,
                  generator=torch.Generator().manual_seed(0)).images[0]
    assert pil.size == (48, 32) and pil.mode == "RGB"


def test_seeds(sd_pipe):
    a, b, c = generate(sd_pipe, seed=1), generate(sd_pipe, seed=1), generate(sd_pipe, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 0.05


def test_prompt_changes_image(sd_pipe):
    a = generate(sd_pipe, prompt="a photo of a cat")
    b = generate(sd_pipe, prompt="a painting of a dog on the beach")
    assert np.abs(a - b).max() > 1e-3


def test_tokenizer_is_local_clip_bpe(sd_pipe):
    tok = sd_pipe.tokenizer
    ids = tok("a photo of a red bottle").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 2 + 6  # every word of the local vocabulary is one token
    assert tok.unk_token_id not in tok("Ünïcödé ✓ works too").input_ids[1:-1]
    assert tok.model_max_length == sd_pipe.text_encoder.config.max_position_embeddings


def test_img2img_and_inpaint_from_pipe_share_weights(sd_pipe, reference_image, square_mask):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    img2img = AutoPipelineForImage2Image.from_pipe(sd_pipe)
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert img2img.unet is sd_pipe.unet  # derived, not reloaded
    out = np.asarray(img2img(prompt="x", image=reference_image, strength=0.6,
                             num_inference_steps=STEPS, output_type="np",
                             generator=torch.Generator().manual_seed(0)).images)
    assert out.shape == (1, 32, 32, 3)

    # A 4-channel UNet runs as "legacy" inpainting (masked latent blending) in diffusers.
    inpaint = AutoPipelineForInpainting.from_pipe(sd_pipe)
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert inpaint.unet is sd_pipe.unet and inpaint.unet.config.in_channels == 4
    out = np.asarray(inpaint(prompt="x", image=reference_image, mask_image=square_mask,
                             strength=0.9, num_inference_steps=STEPS, height=32, width=32,
                             output_type="np", generator=torch.Generator().manual_seed(0)).images)
    assert out.shape == (1, 32, 32, 3)


def test_dedicated_inpaint_model(registry, reference_image, square_mask):
    from diffusers import AutoPipelineForInpainting

    pipe = AutoPipelineForInpainting.from_pretrained(registry.path_for(Role.INPAINT),
                                                     **registry.load_kwargs(Role.INPAINT))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    runs = [np.asarray(pipe(prompt="x", image=reference_image, mask_image=square_mask,
                            num_inference_steps=STEPS, height=32, width=32, output_type="np",
                            generator=torch.Generator().manual_seed(s)).images) for s in (0, 0, 1)]
    assert runs[0].shape == (1, 32, 32, 3)
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_lora_adapters(registry, fresh_sd_pipe):
    pipe = fresh_sd_pipe
    baseline = generate(pipe)
    for name, source in registry.lora_sources().items():
        pipe.load_lora_weights(source.model_id, weight_name=source.weight_name, adapter_name=name)
    assert set(pipe.get_list_adapters()["unet"]) == set(LORA_ADAPTERS)

    names = list(LORA_ADAPTERS)
    pipe.set_adapters(names, adapter_weights=[0.0, 0.0, 0.0, 0.0])
    assert np.array_equal(generate(pipe), baseline), "all-zero LoRA weights must equal no LoRA"

    pipe.set_adapters(names, adapter_weights=[1.0, 0.0, 0.0, 0.0])
    subject = generate(pipe)
    assert np.abs(subject - baseline).max() > 0.05
    pipe.set_adapters(names, adapter_weights=[0.0, 0.0, 1.0, 0.0])
    style = generate(pipe)
    assert np.abs(style - subject).max() > 0.05
    pipe.set_adapters(names, adapter_weights=[0.0, 0.0, 0.5, 0.0])
    assert np.abs(generate(pipe) - style).max() > 1e-3  # the weight itself matters

    pipe.disable_lora()
    assert np.array_equal(generate(pipe), baseline)


def test_ip_adapter(registry, fresh_sd_pipe, reference_image):
    pipe = fresh_sd_pipe
    baseline = generate(pipe)
    src = registry.ip_adapter_source()
    pipe.load_ip_adapter(src.model_id, subfolder=src.subfolder, weight_name=src.weight_name,
                         image_encoder_folder=src.image_encoder_folder)
    assert pipe.image_encoder is not None and pipe.feature_extractor is not None

    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(generate(pipe, ip_adapter_image=reference_image), baseline)
    pipe.set_ip_adapter_scale(0.8)
    with_ref = generate(pipe, ip_adapter_image=reference_image)
    assert np.abs(with_ref - baseline).max() > 0.05
    other = Image.new("RGB", (40, 24), (250, 20, 20))
    assert np.abs(generate(pipe, ip_adapter_image=other) - with_ref).max() > 1e-3

    pipe.unload_ip_adapter()
    assert np.array_equal(generate(pipe), baseline)
