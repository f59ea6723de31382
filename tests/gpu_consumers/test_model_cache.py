"""The warm model cache: load once, derive with from_pipe, LoRA LRU, IP-Adapter, low memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import LoraSource, Role
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
        # The switch's time is reported (bench/bench_lora_switch.py measures it), not bounded here.
        assert switch.names == (name,) and switch.loaded == (name,) and switch.switch_ms >= 0
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


# --------------------------------------------------------------------------- LoRA references


def test_offline_profile_ships_its_demo_loras(tmp_path):
    """The README's `catalog add-subject "Anna" --lora demo/anna` resolves on the offline profile:
    each demo reference is built on first use under the LoRA root (then read as any file), and
    any other name is still refused. Production builds nothing."""
    from gpu_consumers.models import LORA_WEIGHT_NAME, LoraRefError, ModelRegistry
    from gpu_consumers.models.model_registry import OFFLINE_DEMO_LORAS

    registry = ModelRegistry("offline", tmp_path / "models")
    anna = registry.resolve_lora_ref("demo/anna")
    assert "demo/anna" in OFFLINE_DEMO_LORAS
    assert anna.source.model_id == str((registry.lora_root / "demo" / "anna").resolve())
    assert anna.source.weight_name == LORA_WEIGHT_NAME and anna.source.safetensors_only
    assert registry.resolve_lora_ref("demo/anna") == anna  # built once: the same adapter
    with pytest.raises(LoraRefError, match="studio/anna"):
        registry.resolve_lora_ref("studio/anna")
    production = ModelRegistry("production", tmp_path / "prod")
    with pytest.raises(LoraRefError, match="demo/anna"):
        production.resolve_lora_ref("demo/anna")
    assert not (tmp_path / "prod").exists()


def test_lora_references_resolve_only_under_the_root(tmp_path):
    from gpu_consumers.models import LORA_WEIGHT_NAME, LoraRefError, ModelRegistry

    registry = ModelRegistry("offline", tmp_path / "models")
    root = registry.lora_root
    assert root == tmp_path / "models" / "loras"
    anna = registry.build_offline_lora("clients/anna")
    assert (root / "clients" / "anna" / LORA_WEIGHT_NAME).is_file()
    assert anna.adapter_name.startswith("ref_") and anna.source.safetensors_only
    assert anna.source == LoraSource(str((root / "clients" / "anna").resolve()), LORA_WEIGHT_NAME, True)
    assert registry.resolve_lora_ref("clients/anna") == anna  # the same reference, the same adapter
    assert registry.build_offline_lora("bea").adapter_name != anna.adapter_name
    # A folder with several files needs the file named; a file may be named directly.
    (root / "two").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (root / "two" / name).write_bytes((root / "bea" / LORA_WEIGHT_NAME).read_bytes())
    with pytest.raises(LoraRefError, match="'two'.*several"):
        registry.resolve_lora_ref("two")
    assert registry.resolve_lora_ref("two:b.safetensors").source.weight_name == "b.safetensors"
    assert registry.resolve_lora_ref("two/a.safetensors").source.weight_name == "a.safetensors"

    for bad in ("../models/loras/bea", "bea/../bea", "/etc/passwd", str(root / "bea"), "~/bea",
                ".hidden", "bea\\x", "C:/bea", "", "bea/", "bea:x.bin", "hf:org/repo:../x.safetensors"):
        with pytest.raises(LoraRefError, match="malformed"):
            registry.resolve_lora_ref(bad)
    with pytest.raises(LoraRefError, match="unknown LoRA reference 'nobody'"):
        registry.resolve_lora_ref("nobody")
    with pytest.raises(LoraRefError, match="'hf:studio/anna'.*production profile"):
        registry.resolve_lora_ref("hf:studio/anna")
    # Never a pickle: not a .bin file, not a folder holding only one.
    (root / "pickled").mkdir()
    (root / "pickled" / "pytorch_lora_weights.bin").write_bytes(b"pickle")
    (root / "old.bin").write_bytes(b"pickle")
    with pytest.raises(LoraRefError, match="'pickled'.*no .safetensors"):
        registry.resolve_lora_ref("pickled")
    with pytest.raises(LoraRefError, match="'old.bin'.*only .safetensors"):
        registry.resolve_lora_ref("old.bin")
    # A symlink out of the root is refused.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / LORA_WEIGHT_NAME).write_bytes(b"x")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LoraRefError, match="'escape' resolves outside the LoRA root"):
        registry.resolve_lora_ref("escape")


def test_hub_references_need_production_and_an_allowed_repo(tmp_path):
    from gpu_consumers.models import LoraRefError, ModelRegistry

    env = {"COMPUTE_MODEL_PROFILE": "production", "COMPUTE_MODEL_CACHE_DIR": str(tmp_path),
           "COMPUTE_LORA_ROOT": str(tmp_path / "mine"), "COMPUTE_LORA_ALLOWED_REPOS": "studio/*, acme/style"}
    registry = ModelRegistry.from_env(env)
    assert registry.lora_root == tmp_path / "mine"
    assert registry.lora_allowed_repos == ("studio/*", "acme/style")
    anna = registry.resolve_lora_ref("studio/anna")
    assert anna.source == LoraSource("studio/anna", None, True)
    pinned = registry.resolve_lora_ref("hf:studio/anna:v2.safetensors")
    assert pinned.source == LoraSource("studio/anna", "v2.safetensors", True)
    assert pinned.adapter_name != anna.adapter_name
    assert registry.resolve_lora_ref("acme/style").source.model_id == "acme/style"
    for refused in ("acme/other", "evil/anna", "hf:evil/anna", "studio/anna/deeper", "anna"):
        with pytest.raises(LoraRefError, match=f"unknown LoRA reference '{refused}'.*COMPUTE_LORA_ALLOWED_REPOS"):
            registry.resolve_lora_ref(refused)
    # Nothing is allowed by default.
    with pytest.raises(LoraRefError, match="unknown"):
        ModelRegistry.from_env({**env, "COMPUTE_LORA_ALLOWED_REPOS": ""}).resolve_lora_ref("studio/anna")


def test_a_weight_needs_a_reference_or_a_configured_adapter(tmp_path, model_cache):
    from gpu_consumers.models import ModelRegistry

    # A production worker with no adapter configured (nothing is loaded by check_loras).
    registry = ModelRegistry("production", tmp_path, lora_root=model_cache.registry.lora_root)
    cache = ModelCache(registry)
    model_cache.registry.build_offline_lora("check/anna")
    with pytest.raises(InvalidInput, match="no LoRA is configured for subject"):
        cache.check_loras({"subject": 1.0})
    [slot] = cache.check_loras({"subject": 1.0, "style": 0.0}, {"subject": "check/anna"}).values()
    assert (slot.slot, slot.reference) == ("subject", "check/anna") and slot.adapter_name.startswith("ref_")
    with pytest.raises(InvalidInput, match="no LoRA is configured for style"):
        cache.check_loras({"subject": 1.0, "style": 0.5}, {"subject": "check/anna"})
    with pytest.raises(InvalidInput, match="unknown slot.*face"):
        cache.check_loras({}, {"face": "check/anna"})
    # A reference is checked even when its slot has no weight.
    with pytest.raises(InvalidInput, match="product: LoRA reference '../x' is malformed"):
        cache.check_loras({}, {"product": "../x"})


def test_referenced_loras_are_adapters_of_their_own(model_cache):
    registry = model_cache.registry
    anna, bea = registry.build_offline_lora("cache/anna"), registry.build_offline_lora("cache/bea")
    cache = ModelCache(registry, lora_capacity=2)
    pipe = cache.text_to_image()
    first = cache.apply_loras(pipe, {"subject": 1.0}, {"subject": "cache/anna"})
    assert first.names == first.loaded == (anna.adapter_name,)
    with_anna = image_of(pipe)
    again = cache.apply_loras(pipe, {"subject": 1.0}, {"subject": "cache/anna"})
    assert again.names == (anna.adapter_name,) and again.loaded == ()  # cached: loaded once
    cache.apply_loras(pipe, {"subject": 1.0}, {"subject": "cache/bea"})
    with_bea = image_of(pipe)
    assert not np.array_equal(with_anna, with_bea)
    assert cache.loaded_loras(pipe) == [anna.adapter_name, bea.adapter_name]
    # Without a reference the slot's configured adapter applies; the LRU bound holds for all.
    plain = cache.apply_loras(pipe, {"subject": 1.0})
    assert plain.names == ("subject",) and cache.loaded_loras(pipe) == [bea.adapter_name, "subject"]
    # Two slots naming one LoRA apply it once, with their weights added.
    both = cache.apply_loras(pipe, {"subject": 0.5, "product": 0.5},
                             {"subject": "cache/anna", "product": "cache/anna"})
    assert (both.names, both.weights) == ((anna.adapter_name,), (1.0,))
    assert np.array_equal(image_of(pipe), with_anna)


def test_a_referenced_file_that_is_no_lora_is_invalid_input(model_cache):
    registry = model_cache.registry
    broken = registry.lora_root / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    cache = ModelCache(registry)
    pipe = cache.text_to_image()
    with pytest.raises(InvalidInput, match="LoRA reference 'broken' could not be loaded"):
        cache.apply_loras(pipe, {"style": 1.0}, {"style": "broken"})
    assert cache.loaded_loras(pipe) == [] and pipe.get_list_adapters() == {}
