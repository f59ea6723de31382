"""The judge roles: the tiny VLM and CLIP builds, and the check that refuses a judge that cannot
see (a text-only model configured for the vlm role, a non-CLIP model for the clip role)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelRegistry, Role, offline, production_specs
from gpu_consumers.models.judges import JudgeModelError, check_judge_models


def test_the_tiny_vlm_loads_through_the_auto_classes(registry):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = registry.path_for(Role.VLM)
    model = AutoModelForImageTextToText.from_pretrained(path, **registry.load_kwargs(Role.VLM))
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert hasattr(model.config, "vision_config")
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Judge it."}]}],
        add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|im_start|>user\n<image>Judge it.<|im_end|>")
    image = Image.fromarray((np.random.default_rng(0).random((24, 30, 3)) * 255).astype("uint8"))
    inputs = processor(images=[image], text=[chat], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == model.config.image_seq_length  # one placeholder per image feature
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_the_tiny_clip_loads_and_embeds_both_sides(registry):
    from transformers import CLIPModel, CLIPProcessor

    path = registry.path_for(Role.CLIP)
    model = CLIPModel.from_pretrained(path, **registry.load_kwargs(Role.CLIP)).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    image = Image.fromarray(np.full((20, 20, 3), 120, np.uint8))
    inputs = processor(text=["a red bottle"], images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    assert out.text_embeds.shape == out.image_embeds.shape == (1, model.config.projection_dim)


def test_vision_builds_are_deterministic(tmp_path):
    configs = offline.default_configs()
    for role in ("vlm", "clip"):
        digests = set()
        for name in ("a", "b"):
            offline.build(role, tmp_path / f"{role}-{name}", configs[role])
            digests.add(hashlib.sha256(
                (tmp_path / f"{role}-{name}" / "model.safetensors").read_bytes()).digest())
        assert len(digests) == 1, role


def test_offline_judges_pass_the_check(registry):
    assert check_judge_models(registry) == [Role.VLM, Role.CLIP]


def _production(registry, tmp_path, **models: str) -> ModelRegistry:
    """A production registry whose roles point at the offline builds' folders (no hub)."""
    specs = {Role(role): replace(production_specs()[Role(role)], model_id=registry.path_for(target),
                                 torch_dtype="float32")
             for role, target in models.items()}
    return ModelRegistry("production", tmp_path, specs=specs)


def test_a_text_only_judge_is_refused(registry, tmp_path):
    llm_folder = registry.path_for(Role.LLM)
    blind = _production(registry, tmp_path, vlm="llm", clip="clip")
    with pytest.raises(JudgeModelError) as refused:
        check_judge_models(blind)
    assert str(refused.value) == (
        f"the judge model {llm_folder} is text-only (Qwen2ForCausalLM): configure an "
        f"image-text-to-text model for COMPUTE_MODEL_VLM")
    # ... also where it would be loaded, had the start-up check not run.
    with pytest.raises(JudgeModelError, match="text-only"):
        ModelCache(blind).vlm()

    wrong_clip = _production(registry, tmp_path, vlm="vlm", clip="segmentation")
    with pytest.raises(JudgeModelError, match=r"is not a CLIP dual encoder \(DPTForSemanticSegmentation\)"):
        check_judge_models(wrong_clip)
    # A local folder without a transformers config (a diffusers pipeline) cannot be checked.
    no_config = _production(registry, tmp_path, vlm="text_to_image", clip="clip")
    with pytest.raises(JudgeModelError, match="cannot read the config of the vlm model"):
        check_judge_models(no_config)
    assert check_judge_models(_production(registry, tmp_path, vlm="vlm", clip="clip")) == [
        Role.VLM, Role.CLIP]


def test_production_names_real_judges_and_takes_overrides(tmp_path):
    reg = ModelRegistry("production", tmp_path)
    assert reg.path_for(Role.VLM) == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert reg.spec(Role.VLM).loader == "transformers.AutoModelForImageTextToText"
    assert reg.path_for(Role.CLIP) == "openai/clip-vit-large-patch14"
    assert reg.spec(Role.CLIP).loader == "transformers.CLIPModel"
    env = {"COMPUTE_MODEL_PROFILE": "production", "COMPUTE_MODEL_CACHE_DIR": str(tmp_path),
           "COMPUTE_MODEL_VLM": "HuggingFaceTB/SmolVLM-Instruct",
           "COMPUTE_MODEL_CLIP": "/models/clip"}
    reg = ModelRegistry.from_env(env)
    assert (reg.path_for(Role.VLM), reg.path_for(Role.CLIP)) == (
        "HuggingFaceTB/SmolVLM-Instruct", "/models/clip")
