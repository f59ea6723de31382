from __future__ import annotations

import numpy as np
import pytest

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.generation import DiffusersGeneration
from schemas.task_params import SEED_MAX, GenerationParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image

PROMPT = "a woman wearing a blue summer dress, studio lighting"
REF = "file:///inputs/reference.png"


def generate(cache, harness: Harness | None = None, **kw):
    harness = harness or Harness()
    harness.add(REF, noise_image(48, 40, seed=3))
    params = GenerationParams(prompt=kw.pop("prompt", PROMPT), width=kw.pop("width", 64),
                              height=kw.pop("height", 64), **kw)
    return DiffusersGeneration().run(params, model_ctx(harness, cache))


def test_output_size_mode_and_metadata(model_cache):
    harness = Harness()
    result = generate(model_cache, harness, seed=1)
    image = output_image(result)
    assert image.size == (64, 64) and image.mode == "RGB" and image.format == "PNG"
    assert (result.width, result.height, result.seed, result.provider) == (64, 64, 1, "diffusers")
    assert result.model.startswith("offline:text_to_image-")
    assert result.extra["num_inference_steps"] == 2
    harness.assert_progress_complete()
    assert len(harness.progress) == 3  # two denoising steps, then the encoded output


def test_size_not_a_multiple_of_8_is_still_exact(model_cache):
    result = generate(model_cache, seed=1, width=100, height=72)
    assert output_image(result).size == (100, 72)
    assert result.extra["working_size"] == [96, 72]


def test_seeds(model_cache):
    a, b = decode(generate(model_cache, seed=5)), decode(generate(model_cache, seed=5))
    c = decode(generate(model_cache, seed=6))
    assert np.array_equal(a, b)
    assert differs(a, c, 10)


def test_no_seed_draws_one_and_records_it(model_cache):
    first = generate(model_cache)
    assert 0 <= first.seed <= SEED_MAX
    assert np.array_equal(decode(generate(model_cache, seed=first.seed)), decode(first))


def test_lora_weights(model_cache):
    baseline = decode(generate(model_cache, seed=2))
    zero = generate(model_cache, seed=2, subject_lora_weight=0.0, style_lora_weight=0.0)
    assert np.array_equal(decode(zero), baseline), "weight 0 must equal no LoRA"
    subject = generate(model_cache, seed=2, subject_lora_weight=1.0)
    assert differs(decode(subject), baseline, 10)
    assert subject.extra["lora_weights"] == {"subject": 1.0}
    assert isinstance(subject.extra["lora_switch_ms"], float) and subject.extra["lora_switch_ms"] >= 0
    mixed = decode(generate(model_cache, seed=2, subject_lora_weight=1.0, style_lora_weight=0.5))
    assert differs(mixed, decode(subject), 1)
    # The next task without LoRA weights does not inherit the adapters of the previous one.
    assert np.array_equal(decode(generate(model_cache, seed=2)), baseline)


def test_reference_image_through_ip_adapter(model_cache):
    baseline = decode(generate(model_cache, seed=3))
    zero = generate(model_cache, seed=3, reference_image_url=REF, reference_image_strength=0.0)
    assert np.array_equal(decode(zero), baseline), "strength 0 ignores the reference"
    guided = generate(model_cache, seed=3, reference_image_url=REF, reference_image_strength=0.8)
    assert guided.extra["reference_scale"] == 0.8
    assert differs(decode(guided), baseline, 5)
    default = generate(model_cache, seed=3, reference_image_url=REF)
    assert default.extra["reference_scale"] == 0.5
    # Once the adapter is loaded, a task without a reference still gives the plain image.
    assert np.array_equal(decode(generate(model_cache, seed=3)), baseline)


def test_provider_config(model_cache):
    result = generate(model_cache, seed=1, provider_config={
        "num_inference_steps": 3, "guidance_scale": 1.0, "negative_prompt": "blurry"})
    assert result.extra["num_inference_steps"] == 3 and result.extra["guidance_scale"] == 1.0
    with pytest.raises(InvalidInput, match="unknown key.*scheduler"):
        generate(model_cache, provider_config={"scheduler": "euler"})
    with pytest.raises(InvalidInput, match="num_inference_steps must be an integer in 1..150"):
        generate(model_cache, provider_config={"num_inference_steps": 0})


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        generate(model_cache, harness, seed=1)
    assert harness.progress == [0.5]


def test_low_memory_retry_tiles_the_vae_for_that_task_only(model_cache):
    baseline = decode(generate(model_cache, seed=4))
    harness = Harness()
    harness.add(REF, noise_image(48, 40, seed=3))
    params = GenerationParams(prompt=PROMPT, width=64, height=64, seed=4)
    tiled = DiffusersGeneration().run(params, model_ctx(harness, model_cache, low_memory=True))
    assert output_image(tiled).size == (64, 64)
    assert model_cache.text_to_image().vae.use_tiling
    assert np.array_equal(decode(generate(model_cache, seed=4)), baseline)
    assert not model_cache.text_to_image().vae.use_tiling  # the next task switched it off


def test_lora_references_pick_the_adapter_of_a_slot(model_cache):
    registry = model_cache.registry
    anna, bea = registry.build_offline_lora("gen/anna"), registry.build_offline_lora("gen/bea")
    configured = decode(generate(model_cache, seed=2, subject_lora_weight=1.0))

    def subject(ref):
        return generate(model_cache, seed=2, subject_lora_weight=1.0, provider_config={"loras": {"subject": ref}})

    with_anna = subject("gen/anna")
    assert with_anna.extra["lora_refs"] == {"subject": "gen/anna"}
    assert with_anna.extra["lora_weights"] == {"subject": 1.0}
    assert model_cache.last_lora_switch.names == (anna.adapter_name,)
    with_bea = subject("gen/bea")
    assert model_cache.last_lora_switch.names == (bea.adapter_name,)
    # Two LoRAs in one slot: two adapters, two images at the same seed (and neither is the
    # deployment's adapter for the slot).
    assert differs(decode(with_anna), decode(with_bea), 10)
    assert differs(decode(with_anna), configured, 10) and differs(decode(with_bea), configured, 10)
    # The same reference again: loaded once, the same image.
    again = subject("gen/anna")
    assert model_cache.last_lora_switch.loaded == ()
    assert np.array_equal(decode(again), decode(with_anna))
    assert model_cache.loaded_loras(model_cache.text_to_image()).count(anna.adapter_name) == 1
    # A slot without a reference keeps the configured adapter; the task without any is as before.
    mixed = generate(model_cache, seed=2, subject_lora_weight=1.0, style_lora_weight=0.5,
                     provider_config={"loras": {"subject": "gen/anna"}})
    assert set(model_cache.last_lora_switch.names) == {anna.adapter_name, "style"}
    assert mixed.extra["lora_refs"] == {"subject": "gen/anna"}
    plain = generate(model_cache, seed=2, subject_lora_weight=1.0)
    assert "lora_refs" not in plain.extra and np.array_equal(decode(plain), configured)


@pytest.mark.parametrize("loras, message", [
    ({"subject": "../gen/anna"}, "subject: LoRA reference '../gen/anna' is malformed"),
    ({"subject": "/etc/passwd"}, "subject: LoRA reference '/etc/passwd' is malformed"),
    ({"product": "gen/nobody"}, "product: unknown LoRA reference 'gen/nobody'"),
    ({"style": "hf:studio/minimal"}, "unknown LoRA reference 'hf:studio/minimal'.*production profile"),
    ({"face": "gen/anna"}, "unknown LoRA slot.*face"),
    ({"subject": ""}, "reference of subject must be a non-empty string"),
    (["gen/anna"], "loras must be an object"),
])
def test_bad_lora_references_are_invalid_input(model_cache, loras, message):
    model_cache.registry.build_offline_lora("gen/anna")
    with pytest.raises(InvalidInput, match=message):
        generate(model_cache, seed=1, subject_lora_weight=1.0, product_lora_weight=0.5,
                 provider_config={"loras": loras})
