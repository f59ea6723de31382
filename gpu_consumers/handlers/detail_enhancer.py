"""DETAIL_ENHANCER: general detail and local-contrast enhancement.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalDetailEnhancer`, weight-free), described below;
* ``diffusers`` (:class:`DiffusersDetailEnhancer`): low-strength img2img guided by ``prompt``
  (described at the end).

Classical method, with ``s = strength`` (default 0.5, the middle of the seed's 0..1; 0 returns
the input pixels exactly), on float32 RGB in 0..255:

1. local contrast: CLAHE (clip limit ``1 + 3 s``, 8x8 tiles) on the L channel of CIE Lab,
   applied as ``L' = L + s * (clahe(L) - L)``; Lab is computed in float32 so that the colour
   round trip itself changes nothing (CLAHE needs integers: L is quantised to 16 bits for it);
2. unsharp mask: ``x' = x + 1.5 s * (x - gauss(x, sigma=1.5))``;
3. clip to 0..255.

``preserve_original`` (default False): the enhanced image is blended back 50% with the original
and each channel's change is then capped at 16 levels (about 6%), so the result stays close to
the input: ``out = x + clip(0.5 * (enhanced - x), -16, 16)``.

``prompt`` has no meaning without a model; it is recorded in ``extra``.

Diffusion provider (``diffusers``): one img2img pass over the whole image (the base model derived
with ``from_pipe``, at the image size snapped to multiples of 8 and resized back) with strength
``0.5 * s``: detail enhancement should re-draw texture, not content, and img2img changes
composition above about 0.5, so the task's full range maps onto 0..0.5. ``prompt`` None means a
generic detail prompt. ``preserve_original`` blends the result back as above (half the change,
at most 16 levels per channel). s = 0 (or too small for one denoising step) returns the input
pixels. An alpha channel is kept. ``provider_config``: ``num_inference_steps``,
``guidance_scale``, ``negative_prompt``, ``seed`` (None: random, recorded).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import StepCounter, encode_image, load_picture, to_uint8, unsharp
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    ModelProgress,
    denoise_steps,
    int_in,
    provider_options,
    resolve_seed,
    run_img2img,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, SEED_MIN, DetailEnhancerParams

MODEL_NAME = "opencv-clahe-unsharp"
# The middle of the seed's 0..1 range when the task gives no strength.
DEFAULT_STRENGTH = 0.5
# CLAHE clip limit goes from 1 (almost no equalisation) to 4 (strong) with strength.
CLAHE_CLIP_BASE, CLAHE_CLIP_GAIN, CLAHE_TILES = 1.0, 3.0, (8, 8)
# Unsharp at sigma 1.5 px lifts fine texture (fabric, hair); amount 1.5 at strength 1.
UNSHARP_SIGMA, UNSHARP_MAX_AMOUNT = 1.5, 1.5
# preserve_original: half the change, and never more than 16 of 255 levels per channel.
PRESERVE_BLEND, PRESERVE_MAX_DELTA = 0.5, 16.0
# L in float Lab is 0..100; scaled to 0..65535 for the 16-bit CLAHE.
L_TO_U16 = 655.35


def local_contrast(rgb: np.ndarray, strength: float) -> np.ndarray:
    """CLAHE on L, scaled by strength; float32 RGB 0..255 in and out."""
    lab = cv2.cvtColor(rgb / 255.0, cv2.COLOR_RGB2Lab)
    lightness = lab[..., 0]
    l16 = np.clip(np.rint(lightness * L_TO_U16), 0, 65535).astype(np.uint16)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_BASE + CLAHE_CLIP_GAIN * strength, tileGridSize=CLAHE_TILES)
    equalised = clahe.apply(l16).astype(np.float32) / L_TO_U16
    lab[..., 0] = lightness + strength * (equalised - lightness)
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0


def preserve(original: np.ndarray, enhanced: np.ndarray) -> np.ndarray:
    delta = np.clip(PRESERVE_BLEND * (enhanced - original), -PRESERVE_MAX_DELTA, PRESERVE_MAX_DELTA)
    return original + delta


class ClassicalDetailEnhancer:
    task_type: ClassVar[TaskType] = TaskType.DETAIL_ENHANCER
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def run(self, params: DetailEnhancerParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. prepare
        strength = DEFAULT_STRENGTH if params.strength is None else params.strength
        keep_close = bool(params.preserve_original)
        steps = StepCounter(ctx, 4)

        # 3. process
        rgb = picture.rgb
        if strength > 0:
            original = rgb.astype(np.float32)
            enhanced = local_contrast(original, strength)
            steps.step()
            enhanced = np.clip(unsharp(enhanced, UNSHARP_SIGMA, UNSHARP_MAX_AMOUNT * strength), 0.0, 255.0)
            steps.step()
            if keep_close:
                enhanced = preserve(original, enhanced)
            rgb = to_uint8(enhanced)
        steps.step()

        # 4. encode
        output = encode_image(rgb, picture.alpha)
        steps.finish()

        # 5. return
        return HandlerResult(
            outputs=[output],
            model=MODEL_NAME,
            provider="classical",
            seed=None,
            width=picture.width,
            height=picture.height,
            extra={"strength": strength, "preserve_original": keep_close, "prompt": params.prompt},
        )


# --------------------------------------------------------------------------- model providers

# The task's strength 0..1 maps onto img2img strength 0..0.5 (see the doc).
IMG2IMG_STRENGTH_SCALE = 0.5
DEFAULT_DETAIL_PROMPT = "highly detailed, sharp focus, fine texture"
OPTIONS = {**DIFFUSION_OPTIONS, "seed": int_in(SEED_MIN, SEED_MAX)}


class DiffusersDetailEnhancer:
    task_type: ClassVar[TaskType] = TaskType.DETAIL_ENHANCER
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: DetailEnhancerParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        pipe = cache.img2img()
        call_kwargs = cache.prepare(pipe, low_memory=ctx.low_memory)

        # 3. prepare
        strength = IMG2IMG_STRENGTH_SCALE * (DEFAULT_STRENGTH if params.strength is None
                                             else params.strength)
        keep_close = bool(params.preserve_original)
        seed = resolve_seed(options.pop("seed", None))
        steps = denoise_steps(options.pop("num_inference_steps", None)
                              or cache.default_steps(Role.TEXT_TO_IMAGE), strength)
        progress = ModelProgress(ctx, 1)

        # 4. run
        rgb = picture.rgb
        if steps is None:
            progress.advance()
        else:
            with progress.phase() as on_step_end:
                rgb = run_img2img(pipe, rgb, prompt=params.prompt or DEFAULT_DETAIL_PROMPT,
                                  strength=strength, steps=steps,
                                  generator=torch_generator(ctx.device, seed),
                                  on_step_end=on_step_end, call_kwargs={**options, **call_kwargs})
            if keep_close:
                rgb = to_uint8(preserve(picture.rgb.astype(np.float32), rgb.astype(np.float32)))

        # 5. encode
        output = encode_image(rgb, picture.alpha)
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[output], model=cache.model_id(Role.TEXT_TO_IMAGE), provider="diffusers",
            seed=seed, width=picture.width, height=picture.height,
            extra={"img2img_strength": strength, "num_inference_steps": steps,
                   "preserve_original": keep_close, "prompt": params.prompt, **options},
        )
