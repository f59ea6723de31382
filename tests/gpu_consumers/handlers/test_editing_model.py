from __future__ import annotations

import random

import numpy as np
import pytest

from generations.catalog import CatalogKind, InMemoryCatalog
from generations.plan import plan_generation
from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.editing import DiffusersEditing
from schemas.task_params import EditingParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness, decode, output_image, subject_on_plain

BASE, MASK = "file:///inputs/base.png", "file:///inputs/mask.png"
GARMENT, SUBJECT = "file:///inputs/garment.png", "file:///inputs/subject.png"


def square_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def edit(cache, harness: Harness | None = None, seed: int | None = 0, **kw):
    harness = harness or Harness()
    harness.add(BASE, noise_image(64, 64, seed=1))
    harness.add(MASK, square_mask())
    harness.add(GARMENT, noise_image(40, 32, seed=2))
    harness.add(SUBJECT, noise_image(40, 32, seed=4))
    config = dict(kw.pop("provider_config", {}))
    if seed is not None:
        config["seed"] = seed
    params = EditingParams(base_image_url=kw.pop("base_url", BASE), prompt=kw.pop("prompt", "place the dress"),
                           provider_config=config, **kw)
    return DiffusersEditing().run(params, model_ctx(harness, cache))


def test_img2img_without_mask(model_cache):
    harness = Harness()
    result = edit(model_cache, harness, strength=0.8)
    image = output_image(result)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert result.extra["mode"] == "img2img" and result.seed == 0
    assert differs(decode(result), noise_image(64, 64, seed=1), 10)
    harness.assert_progress_complete()


def test_output_size_and_seeds(model_cache):
    result = edit(model_cache, width=80, height=72, strength=0.8)
    assert output_image(result).size == (80, 72) and (result.width, result.height) == (80, 72)
    assert output_image(edit(model_cache, width=96)).size == (96, 96)  # aspect kept
    a, b, c = (decode(edit(model_cache, seed=s, strength=0.9)) for s in (3, 3, 4))
    assert np.array_equal(a, b) and differs(a, c, 10)


def test_strength_zero_returns_the_base_image(model_cache):
    result = edit(model_cache, strength=0.0)
    assert result.extra["num_inference_steps"] is None
    assert np.array_equal(decode(result), noise_image(64, 64, seed=1))


def test_inpainting_changes_only_the_masked_area(model_cache):
    result = edit(model_cache, mask_url=MASK)
    out, base = decode(result), noise_image(64, 64, seed=1)
    assert result.extra["mode"] == "inpaint" and result.extra["strength"] == 1.0
    assert result.model.startswith("offline:inpaint-")
    outside = square_mask() == 0
    assert np.array_equal(out[outside], base[outside])
    assert differs(out[16:48, 16:48], base[16:48, 16:48], 10)


def test_mask_of_the_wrong_size_is_invalid_input(model_cache):
    harness = Harness()
    harness.add(BASE, noise_image(64, 64))
    harness.add(MASK, square_mask(32))
    with pytest.raises(InvalidInput, match="mask is 32x32, image is 64x64"):
        DiffusersEditing().run(EditingParams(base_image_url=BASE, mask_url=MASK),
                               model_ctx(harness, model_cache))
    assert harness.progress == []  # refused before any model work


def test_garment_reference_guides_the_edit(model_cache):
    plain = decode(edit(model_cache, strength=0.9))
    refs = [{"url": SUBJECT, "type": "subject"}, {"url": GARMENT, "type": "garment"}]
    guided = edit(model_cache, strength=0.9, reference_images=refs,
                  provider_config={"reference_image_strength": 1.0})
    assert guided.extra["reference"] == {"url": GARMENT, "type": "garment", "scale": 1.0}
    assert guided.extra["unused_references"] == [SUBJECT]
    assert differs(decode(guided), plain, 5)
    assert np.array_equal(decode(edit(model_cache, strength=0.9)), plain)  # no reference: as before


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        edit(model_cache, harness, strength=1.0)
    assert harness.progress == [0.5]


def test_inpainting_with_a_reference(model_cache):
    refs = [{"url": GARMENT, "type": "garment"}]
    plain = decode(edit(model_cache, mask_url=MASK))
    guided = decode(edit(model_cache, mask_url=MASK, reference_images=refs,
                         provider_config={"reference_image_strength": 1.0}))
    outside = square_mask() == 0
    assert np.array_equal(guided[outside], noise_image(64, 64, seed=1)[outside])
    assert differs(guided, plain, 5)


# --------------------------------------------------------------------------- the tools

SUBJECT_B = "file:///inputs/subject-b.png"
SHOT = "file:///inputs/shot.png"
ANNA, DRESS = "demo/anna", "demo/summer-dress"  # the offline profile's demo LoRAs
RED, BLUE = "file:///inputs/red.png", "file:///inputs/blue.png"


def entry(name: str, lora_ref: str | None = None, weight: float | None = None) -> dict:
    return {"id": "7d3a3b52-53b2-4ef0-9d56-1f7e3f7f9f10", "name": name, "lora_ref": lora_ref,
            "lora_weight": weight}


def tool(cache, name: str, harness: Harness | None = None, **kw):
    """One EDITING task with ``provider_config.tool = name`` (seed 0 unless given)."""
    harness = harness or Harness()
    harness.add(SUBJECT_B, noise_image(40, 32, seed=7))
    harness.add(SHOT, subject_on_plain((64, 64)))
    harness.add(RED, np.full((40, 32, 3), (255, 0, 0), np.uint8))
    harness.add(BLUE, np.full((40, 32, 3), (0, 0, 255), np.uint8))
    config = {"tool": name, "seed": 0, **kw.pop("provider_config", {})}
    return edit(cache, harness, seed=None, provider_config=config, **kw)


def adapter(cache, reference: str) -> str:
    return cache.registry.resolve_lora_ref(reference).adapter_name


def test_subject_swap_applies_the_subject_lora_and_reference_inside_the_mask_only(model_cache):
    refs = [{"url": GARMENT, "type": "garment"}, {"url": SUBJECT, "type": "subject"}]
    subject = {"subject": entry("Anna", ANNA, 0.9), "reference_image_strength": 1.0}
    harness = Harness()
    result = tool(model_cache, "SUBJECT_SWAP", harness, mask_url=MASK, reference_images=refs,
                  provider_config=subject)
    out, base = decode(result), noise_image(64, 64, seed=1)
    outside = square_mask() == 0
    assert np.array_equal(out[outside], base[outside])  # pixel-exact outside the subject's region
    assert differs(out[16:48, 16:48], base[16:48, 16:48], 10)
    # The subject's catalog LoRA is the one active adapter, at the catalog's weight.
    assert model_cache.last_lora_switch.names == (adapter(model_cache, ANNA),)
    assert model_cache.last_lora_switch.weights == (0.9,)
    assert result.extra["lora_adapters"] == [adapter(model_cache, ANNA)]
    assert result.extra["lora_refs"] == {"subject": ANNA}
    assert result.extra["tool"] == "SUBJECT_SWAP" and result.extra["strength"] == 1.0
    assert result.extra["subject"]["name"] == "Anna" and result.extra["region"]["source"] == "mask"
    assert result.extra["reference"]["url"] == SUBJECT  # the subject's reference, not the garment
    harness.assert_progress_complete()

    def swap(subject_entry, ref_url):
        return decode(tool(model_cache, "SUBJECT_SWAP", mask_url=MASK,
                           reference_images=[{"url": ref_url, "type": "subject"}],
                           provider_config={"subject": subject_entry, "reference_image_strength": 1.0}))

    with_lora = swap(entry("Anna", ANNA, 0.9), SUBJECT)
    assert np.array_equal(with_lora, out)  # same task, same pixels
    assert differs(swap(entry("Anna"), SUBJECT), with_lora, 5)  # the LoRA changes the subject
    assert differs(swap(entry("Anna", ANNA, 0.9), SUBJECT_B), with_lora, 5)  # so does the reference


def test_subject_swap_finds_the_subject_without_a_mask(model_cache):
    # The tiny offline segmentation model's matte is flat (no boundary): GrabCut finds the body.
    result = tool(model_cache, "SUBJECT_SWAP", provider_config={"subject": entry("Anna", ANNA)}, base_url=SHOT)
    out, base = decode(result), subject_on_plain((64, 64))
    assert result.extra["region"]["source"] == "grabcut" and 0.1 < result.extra["region"]["fraction"] < 0.5
    # subject_on_plain's body is rows 16..48, columns 24..40; the region grows by 2 px
    # (REGION_GROW_MIN_PX, 2% of 64 rounds to 1), GrabCut's 1-px soft edge adds one more.
    far = np.ones((64, 64), bool)
    far[16 - 4:48 + 4, 24 - 4:40 + 4] = False
    assert np.array_equal(out[far], base[far])
    assert differs(out[20:44, 28:36], base[20:44, 28:36], 10)


def test_product_enhancement_applies_the_product_lora_at_half_strength(model_cache):
    harness = Harness()
    result = tool(model_cache, "PRODUCT_ENHANCEMENT", harness, mask_url=MASK,
                  provider_config={"product": entry("Summer Dress", DRESS),
                                   "subject": entry("Anna", ANNA)})
    out, base = decode(result), noise_image(64, 64, seed=1)
    outside = square_mask() == 0
    assert np.array_equal(out[outside], base[outside])
    assert differs(out[16:48, 16:48], base[16:48, 16:48], 5)
    # Only the product's LoRA (weight None: 1.0); the subject is not this tool's.
    assert model_cache.last_lora_switch.names == (adapter(model_cache, DRESS),)
    assert model_cache.last_lora_switch.weights == (1.0,)
    assert result.extra["strength"] == 0.5 and result.extra["lora_refs"] == {"product": DRESS}
    harness.assert_progress_complete()
    plain = decode(tool(model_cache, "PRODUCT_ENHANCEMENT", mask_url=MASK,
                        provider_config={"product": entry("Summer Dress")}))
    assert differs(plain, out, 5)


def test_edit_places_the_reference_in_the_mask_then_harmonises_it(model_cache):
    # Strength 0: no denoising, so the output is the composite itself: red exactly in the mask.
    placed = tool(model_cache, "EDIT", mask_url=MASK, strength=0.0,
                  reference_images=[{"url": RED, "type": "garment"}])
    out, base = decode(placed), noise_image(64, 64, seed=1)
    inside = square_mask() == 255
    assert placed.extra["placed_reference"] is True
    assert np.array_equal(out[~inside], base[~inside])
    assert (out[inside] == (255, 0, 0)).all()
    # Default strength: the model harmonises (0.6); the reference still decides the result.
    red = tool(model_cache, "EDIT", mask_url=MASK, reference_images=[{"url": RED, "type": "garment"}])
    blue = decode(tool(model_cache, "EDIT", mask_url=MASK, reference_images=[{"url": BLUE, "type": "garment"}]))
    assert red.extra["strength"] == 0.6 and red.extra["mode"] == "inpaint"
    assert red.model.startswith("offline:inpaint-")  # no LoRA: the dedicated inpainting model
    assert differs(decode(red)[inside], out[inside], 5)  # harmonised, not pasted
    assert np.array_equal(decode(red)[~inside], base[~inside]) and np.array_equal(blue[~inside], base[~inside])
    assert differs(decode(red), blue, 10)
    assert model_cache.last_lora_switch.names == ()  # no entry, no LoRA
    # With a catalog LoRA, EDIT inpaints with the base model's UNet (the one the LoRA fits).
    dressed = tool(model_cache, "EDIT", mask_url=MASK, reference_images=[{"url": RED, "type": "garment"}],
                   provider_config={"product": entry("Summer Dress", DRESS, 0.5)})
    assert dressed.model.startswith("offline:text_to_image-") and dressed.extra["lora_refs"] == {"product": DRESS}
    assert model_cache.last_lora_switch.names == (adapter(model_cache, DRESS),)
    assert np.array_equal(decode(dressed)[~inside], base[~inside])


def test_an_unknown_subject_lora_is_invalid_input_before_any_work(model_cache):
    harness = Harness()
    with pytest.raises(InvalidInput, match="subject: unknown LoRA reference 'nobody/here'"):
        tool(model_cache, "SUBJECT_SWAP", harness, mask_url=MASK,
             provider_config={"subject": entry("Nobody", "nobody/here")})
    assert harness.progress == []


@pytest.mark.parametrize(("config", "message"), [
    ({"tool": "SWAP"}, "provider_config.tool must be one of EDIT, SUBJECT_SWAP"),
    ({"tool": "SUBJECT_SWAP", "subject": "anna"}, "provider_config.subject must be a catalog entry"),
    ({"tool": "SUBJECT_SWAP", "subject": {"name": " "}}, "subject.name must be a non-empty"),
    ({"tool": "PRODUCT_ENHANCEMENT", "product": {"name": "Dress", "lora_weight": 2}}, "lora_weight must be"),
    ({"tool": "SUBJECT_SWAP"}, "SUBJECT_SWAP needs the new subject"),
])
def test_bad_tool_settings_are_invalid_input(model_cache, config, message):
    harness = Harness()
    with pytest.raises(InvalidInput, match=message):
        edit(model_cache, harness, provider_config=config)
    assert harness.progress == []


def test_the_planners_subject_swap_task_runs_with_the_catalog_subjects_lora(model_cache):
    # The contract between generations/plan.py and this handler: what the planner sends works.
    # The subject's reference comes from the catalog: the request brings none.
    store = InMemoryCatalog()
    anna = store.add(CatalogKind.SUBJECT, "Anna", ANNA, 0.75, reference_urls=[SUBJECT])
    anna_b = store.add(CatalogKind.SUBJECT, "Anna", ANNA, 0.75, reference_urls=[SUBJECT_B])

    def swap(subject_id):
        plan = plan_generation({"strategy": "EDITING", "base_img_path": SHOT, "tool": "SUBJECT_SWAP",
                                "subject_id": subject_id}, store, random.Random(0))
        [task] = plan.tasks
        harness = Harness()
        harness.add(SHOT, subject_on_plain((64, 64)))
        harness.add(SUBJECT, noise_image(40, 32, seed=4))
        harness.add(SUBJECT_B, noise_image(40, 32, seed=7))
        result = DiffusersEditing().run(task.params.model_copy(update={"provider_config": {
            **task.params.provider_config, "seed": 0, "reference_image_strength": 1.0}}), model_ctx(harness, model_cache))
        harness.assert_progress_complete()
        return result

    result = swap(anna.id)
    assert model_cache.last_lora_switch.names == (adapter(model_cache, ANNA),)
    assert model_cache.last_lora_switch.weights == (0.75,)
    assert result.extra["tool"] == "SUBJECT_SWAP" and result.extra["subject"] == {"id": anna.id, "name": "Anna"}
    assert result.extra["region"]["source"] == "grabcut"
    assert result.extra["reference"] == {"url": SUBJECT, "type": "subject", "scale": 1.0}
    assert differs(decode(swap(anna_b.id)), decode(result), 5)  # another stored reference, another subject
