"""EDITING: change an existing image where a mask says (inpainting), or all over (img2img).

One provider, ``diffusers`` (:class:`DiffusersEditing`): editing means drawing new content, which
no weight-free method does.

* ``mask_url`` given: the dedicated inpainting model (registry role ``inpaint``) repaints the
  white part of the mask. The mask must have exactly the base image's size (INVALID_INPUT
  "mask is WxH, image is WxH" otherwise; it is checked before any model work). Pixels where the
  mask is black are copied from the base image, so they never change (grey levels blend).
* no mask: img2img on the whole image with the base pipeline derived by ``from_pipe``.
* ``strength`` (0..1): how far the edit may move from the base image; None means diffusers' own
  defaults, 1.0 for inpainting and 0.8 for img2img. A strength too small for even one denoising
  step returns the base image unchanged (resized if asked).
* ``reference_images``: the first one of type ``garment`` or ``product`` (else the first one)
  guides the edit through the IP-Adapter, scale ``provider_config.reference_image_strength``
  (default 0.5); the others are not used (one IP-Adapter image per task) and are listed in
  ``extra["unused_references"]``.
* ``width`` / ``height``: the output size (one alone keeps the base image's aspect; none: the
  base image's size). The model runs at the nearest multiples of 8 and the result is resized
  (Lanczos) to exactly the size asked for.
* ``prompt``: the edit guidance (None: an empty prompt).
* ``provider_config``: ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``,
  ``reference_image_strength``; ``seed`` (random when absent, recorded in the result).

The output is an opaque RGB PNG: an alpha channel of the base image is not kept (an edit can
paint over transparent areas).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import encode_image, load_picture, to_picture, to_uint8
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    ModelProgress,
    denoise_steps,
    float_in,
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
# Reference types that are what the edit places on the image (the seed's example: a garment).
PLACED_TYPES = ("garment", "product")
OPTIONS = {**DIFFUSION_OPTIONS, "reference_image_strength": float_in(0.0, 1.0),
           "seed": int_in(SEED_MIN, SEED_MAX)}


# --------------------------------------------------------------------------- model providers


class DiffusersEditing:
    task_type: ClassVar[TaskType] = TaskType.EDITING
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: EditingParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        base = load_picture(ctx, params.base_image_url, "base_image_url")
        mask = None
        if params.mask_url is not None:
            mask_image = ctx.fetch.fetch_image(params.mask_url, mode="L")
            if mask_image.size != (base.width, base.height):
                raise InvalidInput(
                    f"mask_url: mask is {mask_image.width}x{mask_image.height}, image is "
                    f"{base.width}x{base.height}; send a mask of the image's size")
            mask = np.asarray(mask_image)
        placed = [r for r in params.reference_images if r.type.lower() in PLACED_TYPES]
        chosen = (placed or params.reference_images or [None])[0]
        reference = None
        if chosen is not None:
            reference = to_picture(ctx.fetch.fetch_image(chosen.url, mode="RGB"), "reference_images")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        pipe = cache.inpaint() if mask is not None else cache.img2img()
        ref_strength = options.pop("reference_image_strength", DEFAULT_REFERENCE_STRENGTH)
        call_kwargs = cache.prepare(
            pipe, low_memory=ctx.low_memory, reference_scale=ref_strength,
            reference=None if reference is None else Image.fromarray(reference.rgb))

        # 3. prepare
        seed = resolve_seed(options.pop("seed", None))
        width, height = requested_size(params.width, params.height, base.width, base.height)
        work = (snap(width), snap(height))
        default = DEFAULT_INPAINT_STRENGTH if mask is not None else DEFAULT_IMG2IMG_STRENGTH
        strength = default if params.strength is None else params.strength
        role = Role.INPAINT if mask is not None else Role.TEXT_TO_IMAGE
        steps = denoise_steps(options.pop("num_inference_steps", None) or cache.default_steps(role),
                              strength)
        progress = ModelProgress(ctx, 1)
        generator = torch_generator(ctx.device, seed)
        prompt = params.prompt or ""

        # 4. run
        if steps is None:  # nothing to denoise: the base image as asked
            rgb = resize(base.rgb, (width, height))
            progress.advance()
        else:
            with progress.phase() as on_step_end:
                kwargs = dict(prompt=prompt, image=Image.fromarray(resize(base.rgb, work)),
                              strength=strength, num_inference_steps=steps, generator=generator,
                              output_type="pil", callback_on_step_end=on_step_end,
                              **options, **call_kwargs)
                if mask is not None:
                    kwargs.update(mask_image=Image.fromarray(resize(mask, work)),
                                  width=work[0], height=work[1])
                rgb = resize(pipe_image(pipe(**kwargs)), (width, height))
            if mask is not None:  # outside the mask: exactly the base image
                weight = resize(mask, (width, height)).astype(np.float32)[..., None] / 255.0
                original = resize(base.rgb, (width, height)).astype(np.float32)
                rgb = to_uint8(weight * rgb.astype(np.float32) + (1.0 - weight) * original)

        # 5. encode
        encoded = encode_image(rgb)
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[encoded], model=cache.model_id(role), provider="diffusers", seed=seed,
            width=width, height=height,
            extra={
                "mode": "inpaint" if mask is not None else "img2img",
                "strength": strength,
                "num_inference_steps": steps,
                "working_size": list(work),
                "reference": None if chosen is None else {"url": chosen.url, "type": chosen.type,
                                                          "scale": ref_strength},
                "unused_references": [r.url for r in params.reference_images if r is not chosen],
                **options,
            },
        )
