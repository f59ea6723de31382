"""EDITING: change an existing image where a mask says (inpainting), or all over (img2img),
with the tool the generation asked for (``editing_tools.py``: EDIT, SUBJECT_SWAP,
PRODUCT_ENHANCEMENT, in ``provider_config.tool``).

One provider, ``diffusers`` (:class:`DiffusersEditing`): editing means drawing new content, which
no weight-free method does.

* **the region**: ``mask_url`` given, its white part (the mask must have exactly the base image's
  size: INVALID_INPUT "mask is WxH, image is WxH" otherwise, checked before any model work).
  Without a mask, SUBJECT_SWAP and PRODUCT_ENHANCEMENT find it: the registry's segmentation
  model's foreground (as BACKGROUND_REMOVE's), and where its matte is all or nothing (no subject
  boundary: the tiny offline model, or a model that missed) GrabCut seeded with a centred
  rectangle (the classical BACKGROUND_REMOVE's); grown by 2% of the shorter side so the seam is
  repainted. Neither finding a subject is INVALID_INPUT ("send mask_url"). EDIT without a mask
  is img2img on the whole image. Pixels outside the region are copied from the base image, so
  they never change (grey mask levels blend).
* **the tool** (``provider_config.tool``, default EDIT):

  - EDIT: general compositing. The reference (first of type ``garment`` / ``product``, else the
    first) is placed in the mask's bounding box (scaled to cover it, centre-cropped, blended
    through the mask), then harmonised by the dedicated inpainting model (registry role
    ``inpaint``) at strength 0.6, and guides it through the IP-Adapter. Without a reference the
    masked area is repainted (strength 1.0). ``subject``/``product`` LoRAs apply when given.
  - SUBJECT_SWAP: the region repainted (strength 1.0) with ``provider_config.subject``'s LoRA
    (slot ``subject``) and the reference of type ``subject`` / ``person`` / ``model`` (else the
    first) through the IP-Adapter. Needs a subject or a reference (INVALID_INPUT otherwise).
    Without a reference of its types in the request, the entry's own (catalog
    ``reference_urls``) is used.
  - PRODUCT_ENHANCEMENT: the region re-noised half way (strength 0.5, so the product keeps its
    shape) with ``provider_config.product``'s LoRA (slot ``product``) and the reference of type
    ``product`` / ``garment`` through the IP-Adapter (else the product's own, as above).

  A tool with a LoRA, and SUBJECT_SWAP / PRODUCT_ENHANCEMENT always, inpaint with the pipeline
  derived from the text-to-image model (``ModelCache.inpaint_from_base``): the catalog's LoRAs
  are trained for that model's UNet, not for the dedicated inpainting UNet. A LoRA reference the
  worker cannot resolve is INVALID_INPUT naming it (as GENERATION's). The result's ``extra``
  records ``tool``, ``lora_refs`` (slot -> reference), ``lora_adapters`` (the active adapter
  names), ``region`` (its source and fraction) and the entries' ids and names.
* ``strength`` (0..1): how far the edit may move from the base image; None means the tool's
  default above (img2img 0.8). A strength too small for even one denoising step returns the
  base image (EDIT with a placed reference: the composite) unchanged (resized if asked).
* ``reference_images``: one guides the edit (the tool's choice above), scale
  ``provider_config.reference_image_strength`` (default 0.5); the others are listed in
  ``extra["unused_references"]``.
* ``width`` / ``height``: the output size (one alone keeps the base image's aspect; none: the
  base image's size). The model runs at the nearest multiples of 8 and the result is resized
  (Lanczos) to exactly the size asked for.
* ``prompt``: the edit guidance (None: the names of the tool's catalog entries, else empty).
* ``provider_config``: ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``,
  ``reference_image_strength``, ``seed`` (random when absent, recorded in the result), ``tool``,
  ``subject``, ``product`` (see ``editing_tools.py``).

The output is an opaque RGB PNG: an alpha channel of the base image is not kept (an edit can
paint over transparent areas).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from generations.requests import EditingTool
from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import encode_image, grabcut_alpha, load_picture, to_picture
from gpu_consumers.handlers.editing_tools import (
    PLACED_STRENGTH,
    TOOLS,
    choose_reference,
    entry_option,
    keep_outside,
    place_reference,
    region_from_alpha,
    tool_loras,
    tool_option,
)
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    ModelProgress,
    denoise_steps,
    float_in,
    foreground_alpha,
    int_in,
    pipe_image,
    provider_options,
    requested_size,
    resize,
    resolve_seed,
    snap,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, SEED_MIN, EditingParams

DEFAULT_PROVIDER = "diffusers"
# diffusers' defaults: an inpainting model repaints the masked area fully; img2img keeps a trace.
DEFAULT_INPAINT_STRENGTH, DEFAULT_IMG2IMG_STRENGTH = 1.0, 0.8
DEFAULT_REFERENCE_STRENGTH = 0.5
ENTRY_SLOTS = ("subject", "product")
OPTIONS = {**DIFFUSION_OPTIONS, "reference_image_strength": float_in(0.0, 1.0),
           "seed": int_in(SEED_MIN, SEED_MAX), "tool": tool_option,
           "subject": entry_option, "product": entry_option}


def find_region(cache: ModelCache, rgb: np.ndarray, device: str) -> tuple[np.ndarray, str]:
    """The subject's region (uint8 0/255) and what found it: the segmentation model, else
    GrabCut where the model's matte is all or nothing (see the module doc)."""
    region = region_from_alpha(foreground_alpha(cache.segmentation(), rgb, device))
    if region is not None:
        return region, "segmentation"
    region = region_from_alpha(grabcut_alpha(rgb))
    if region is None:
        raise InvalidInput("base_image_url: found no subject to edit (neither the segmentation "
                           "model nor GrabCut separated one from the background); send mask_url")
    return region, "grabcut"


# --------------------------------------------------------------------------- model providers


class DiffusersEditing:
    task_type: ClassVar[TaskType] = TaskType.EDITING
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: EditingParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs (the catalog entries' LoRAs resolve before anything is fetched)
        options = provider_options(params.provider_config, OPTIONS)
        tool: EditingTool = options.pop("tool", EditingTool.EDIT)
        spec = TOOLS[tool]
        entries = {slot: options.pop(slot) for slot in ENTRY_SLOTS if slot in options}
        weights, refs = tool_loras(spec, entries)
        cache = ModelCache.for_context(ctx)
        cache.check_loras(weights, refs)
        stored = [r for slot in spec.slots if slot in entries for r in entries[slot].references]
        chosen = choose_reference(params.reference_images, spec.reference_types, stored)
        if tool is EditingTool.SUBJECT_SWAP and "subject" not in entries and chosen is None:
            raise InvalidInput("SUBJECT_SWAP needs the new subject: provider_config.subject (a "
                               "catalog subject) or a reference image of it")
        base = load_picture(ctx, params.base_image_url, "base_image_url")
        mask = None
        if params.mask_url is not None:
            mask_image = ctx.fetch.fetch_image(params.mask_url, mode="L")
            if mask_image.size != (base.width, base.height):
                raise InvalidInput(
                    f"mask_url: mask is {mask_image.width}x{mask_image.height}, image is "
                    f"{base.width}x{base.height}; send a mask of the image's size")
            mask = np.asarray(mask_image)
        reference = None
        if chosen is not None:
            reference = to_picture(ctx.fetch.fetch_image(chosen.url, mode="RGB"), "reference_images")
        ctx.cancel.raise_if_cancelled()

        # 2. the region: the mask, else the subject the tool works on (found by a model)
        finds = mask is None and spec.finds_region
        progress = ModelProgress(ctx, 2 if finds else 1)
        region_source = None if mask is None else "mask"
        if finds:
            mask, region_source = find_region(cache, base.rgb, ctx.device)
            progress.advance()

        # 3. load from the warm cache; switch this task's adapters
        if mask is None:
            pipe, role, mode = cache.img2img(), Role.TEXT_TO_IMAGE, "img2img"
        elif tool is EditingTool.EDIT and not weights:
            pipe, role, mode = cache.inpaint(), Role.INPAINT, "inpaint"
        else:  # the catalog LoRAs fit the base model's UNet
            pipe, role, mode = cache.inpaint_from_base(), Role.TEXT_TO_IMAGE, "inpaint"
        ref_strength = options.pop("reference_image_strength", DEFAULT_REFERENCE_STRENGTH)
        call_kwargs = cache.prepare(
            pipe, loras=weights, lora_refs=refs, low_memory=ctx.low_memory,
            reference_scale=ref_strength,
            reference=None if reference is None else Image.fromarray(reference.rgb))
        switch = cache.last_lora_switch

        # 4. prepare: EDIT composites the reference into the mask before the model harmonises it
        image, placed = base.rgb, False
        if tool is EditingTool.EDIT and mask is not None and reference is not None:
            image, placed = place_reference(base.rgb, reference.rgb, mask), True
        seed = resolve_seed(options.pop("seed", None))
        width, height = requested_size(params.width, params.height, base.width, base.height)
        work = (snap(width), snap(height))
        default = (spec.default_strength or (PLACED_STRENGTH if placed else None)
                   or (DEFAULT_INPAINT_STRENGTH if mask is not None else DEFAULT_IMG2IMG_STRENGTH))
        strength = default if params.strength is None else params.strength
        steps = denoise_steps(options.pop("num_inference_steps", None) or cache.default_steps(role),
                              strength)
        generator = torch_generator(ctx.device, seed)
        prompt = params.prompt or ", ".join(entries[s].name for s in spec.slots if s in entries)

        # 5. run
        if steps is None:  # nothing to denoise: the (composited) base image as asked
            rgb = resize(image, (width, height))
            progress.advance()
        else:
            with progress.phase() as on_step_end:
                kwargs: dict[str, Any] = dict(
                    prompt=prompt, image=Image.fromarray(resize(image, work)), strength=strength,
                    num_inference_steps=steps, generator=generator, output_type="pil",
                    callback_on_step_end=on_step_end, **options, **call_kwargs)
                if mask is not None:
                    kwargs.update(mask_image=Image.fromarray(resize(mask, work)),
                                  width=work[0], height=work[1])
                rgb = resize(pipe_image(pipe(**kwargs)), (width, height))
        if mask is not None:  # outside the region: exactly the base image
            rgb = keep_outside(rgb, resize(base.rgb, (width, height)), resize(mask, (width, height)))

        # 6. encode
        encoded = encode_image(rgb)
        progress.finish()

        # 7. return
        return HandlerResult(
            outputs=[encoded], model=cache.model_id(role), provider="diffusers", seed=seed,
            width=width, height=height,
            extra={
                "tool": tool.value,
                "mode": mode,
                "strength": strength,
                "num_inference_steps": steps,
                "working_size": list(work),
                "region": None if mask is None else {
                    "source": region_source,
                    "fraction": round(float((mask >= 128).mean()), 4)},
                "placed_reference": placed,
                "reference": None if chosen is None else {"url": chosen.url, "type": chosen.type,
                                                          "scale": ref_strength},
                "unused_references": [r.url for r in params.reference_images if r is not chosen],
                **{slot: {"id": e.id, "name": e.name} for slot, e in entries.items()},
                "lora_weights": weights,
                **({"lora_refs": refs} if refs else {}),
                "lora_adapters": [] if switch is None else list(switch.names),
                **options,
            },
        )
