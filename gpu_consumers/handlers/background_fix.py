"""BACKGROUND_FIX: keep the subject, replace what is behind it.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalBackgroundFix`, weight-free), described below;
* ``diffusers`` (:class:`DiffusersBackgroundFix`): the foreground from a segmentation model, a
  new background inpainted from ``background_prompt`` (described at the end).

Classical method:

1. foreground alpha from GrabCut seeded with a centred rectangle (as BACKGROUND_REMOVE's
   classical provider), then grown by ``mask_expansion`` px (default 0): every pixel within that
   distance of the foreground becomes foreground (a distance transform, so the cost does not
   depend on the distance);
2. edges feathered by ``blend_strength`` b (default 0.5): a Gaussian blur of the alpha with
   ``sigma = 1% of the shorter side * b`` (b = 0 keeps GrabCut's one-pixel soft edge); the blur
   is symmetric, like an editor's feather, so at high b a faint rim of the old background shows;
3. the new background is ``background_image_url``, resized (Lanczos) to cover the frame and
   centre-cropped, never stretched;
4. ``out = alpha * base + (1 - alpha) * background``; the output is opaque RGB PNG (a base alpha
   channel is dropped: the new background fills the frame).

A classical method cannot paint a background from words, so ``background_prompt`` alone is
INVALID_INPUT ("needs the diffusers provider"); with both, the image is used and the prompt is
recorded in ``extra``. Neither is INVALID_INPUT too.

Diffusion provider (``diffusers``):

1. foreground alpha: the registry's segmentation model (1 - P(background labels), resized to the
   image), grown by ``mask_expansion`` px as above;
2. ``background_image_url`` given: composited exactly as the classical provider does (steps 2-4
   above, image wins over prompt). Otherwise ``background_prompt``: the dedicated inpainting
   model repaints everything outside the (expanded) foreground, at the image size snapped to
   multiples of 8 and resized back; ``seed`` and ``num_inference_steps`` etc. come from
   ``provider_config`` (seed None: random, recorded);
3. the original subject goes back on top through the alpha feathered by ``blend_strength``
   (as above), so the subject's pixels stay the input's and the seam is soft.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import (
    GRABCUT_ITERATIONS,
    StepCounter,
    encode_image,
    grabcut_alpha,
    load_picture,
    to_picture,
    to_uint8,
)
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    ModelProgress,
    foreground_alpha,
    int_in,
    pipe_image,
    provider_options,
    resize,
    resolve_seed,
    snap,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, SEED_MIN, BackgroundFixParams

MODEL_NAME = "opencv-grabcut-composite"
# The middle of the seed's 0..1 range when the task gives no blend strength.
DEFAULT_BLEND_STRENGTH = 0.5
# At blend strength 1 the feather's sigma is 1% of the shorter side (10 px on a 1024 px image):
# wide enough to hide a rough mask edge, narrow enough to keep the old background's rim faint.
FEATHER_MAX_FRAC = 0.01


def expand(alpha: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the foreground (alpha >= 0.5) by ``pixels``, keeping the soft edge elsewhere."""
    if pixels <= 0:
        return alpha
    background = (alpha < 0.5).astype(np.uint8)
    distance = cv2.distanceTransform(background, cv2.DIST_L2, 5)  # distance to the foreground
    return np.maximum(alpha, (distance <= pixels).astype(np.float32))


def feather(alpha: np.ndarray, blend_strength: float) -> np.ndarray:
    sigma = FEATHER_MAX_FRAC * min(alpha.shape) * blend_strength
    if sigma < 0.5:  # below half a pixel a blur changes nothing visible
        return alpha
    return np.clip(cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma), 0.0, 1.0)


def cover(background: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``background`` to cover width x height keeping its aspect, then centre-crop."""
    bh, bw = background.shape[:2]
    scale = max(width / bw, height / bh)
    size = (max(width, round(bw * scale)), max(height, round(bh * scale)))
    resized = np.asarray(Image.fromarray(background).resize(size, Image.Resampling.LANCZOS))
    x0, y0 = (size[0] - width) // 2, (size[1] - height) // 2
    return resized[y0:y0 + height, x0:x0 + width]


class ClassicalBackgroundFix:
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_FIX
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def run(self, params: BackgroundFixParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs (before fetching anything: a prompt-only task can't run here)
        if params.background_image_url is None:
            if params.background_prompt:
                raise InvalidInput(
                    "background_prompt needs the diffusers provider; "
                    "give background_image_url for the classical one"
                )
            raise InvalidInput("BACKGROUND_FIX needs background_image_url (or background_prompt "
                               "with the diffusers provider)")
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        # The backdrop fills the frame, so its alpha (if any) is of no use: ask for RGB.
        backdrop = to_picture(ctx.fetch.fetch_image(params.background_image_url, mode="RGB"),
                              "background_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. prepare: GrabCut iterations, mask shaping, background fit, compositing, encoding
        expansion = params.mask_expansion or 0
        blend = DEFAULT_BLEND_STRENGTH if params.blend_strength is None else params.blend_strength
        steps = StepCounter(ctx, GRABCUT_ITERATIONS + 4)

        # 3. process
        alpha = grabcut_alpha(picture.rgb, on_iteration=steps.step)
        alpha = feather(expand(alpha, expansion), blend)
        steps.step()
        background = cover(backdrop.rgb, picture.width, picture.height).astype(np.float32)
        steps.step()
        weight = alpha[..., None]
        rgb = to_uint8(weight * picture.rgb.astype(np.float32) + (1.0 - weight) * background)
        steps.step()

        # 4. encode
        output = encode_image(rgb)
        steps.finish()

        # 5. return
        return HandlerResult(
            outputs=[output],
            model=MODEL_NAME,
            provider="classical",
            seed=None,
            width=picture.width,
            height=picture.height,
            extra={
                "foreground_fraction": round(float(alpha.mean()), 4),
                "mask_expansion": expansion,
                "blend_strength": blend,
                "background_prompt": params.background_prompt,
            },
        )


# --------------------------------------------------------------------------- model providers

OPTIONS = {**DIFFUSION_OPTIONS, "seed": int_in(SEED_MIN, SEED_MAX)}


class DiffusersBackgroundFix:
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_FIX
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: BackgroundFixParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        if params.background_image_url is None and not params.background_prompt:
            raise InvalidInput("BACKGROUND_FIX needs background_prompt or background_image_url")
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        backdrop = None
        if params.background_image_url is not None:
            backdrop = to_picture(ctx.fetch.fetch_image(params.background_image_url, mode="RGB"),
                                  "background_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        segmenter = cache.segmentation()
        pipe = cache.inpaint() if backdrop is None else None
        call_kwargs = {} if pipe is None else cache.prepare(pipe, low_memory=ctx.low_memory)

        # 3. prepare: the foreground mask, grown and feathered
        expansion = params.mask_expansion or 0
        blend = DEFAULT_BLEND_STRENGTH if params.blend_strength is None else params.blend_strength
        progress = ModelProgress(ctx, 2)
        grown = expand(foreground_alpha(segmenter, picture.rgb, ctx.device), expansion)
        alpha = feather(grown, blend)
        progress.advance()
        seed = None if pipe is None else resolve_seed(options.pop("seed", None))

        # 4. run: the new background, then the subject on top of it
        if pipe is None:
            background = cover(backdrop.rgb, picture.width, picture.height)
            progress.advance()
        else:
            work = (snap(picture.width), snap(picture.height))
            repaint = to_uint8(grown < 0.5, 255.0)  # white where the background is
            steps = options.pop("num_inference_steps", None) or cache.default_steps(Role.INPAINT)
            with progress.phase() as on_step_end:
                output = pipe(prompt=params.background_prompt,
                              image=Image.fromarray(resize(picture.rgb, work)),
                              mask_image=Image.fromarray(resize(repaint, work)), width=work[0],
                              height=work[1], num_inference_steps=steps,
                              generator=torch_generator(ctx.device, seed), output_type="pil",
                              callback_on_step_end=on_step_end, **options, **call_kwargs)
            background = resize(pipe_image(output), (picture.width, picture.height))
            options["num_inference_steps"] = steps
        weight = alpha[..., None]
        rgb = to_uint8(weight * picture.rgb.astype(np.float32)
                       + (1.0 - weight) * background.astype(np.float32))

        # 5. encode
        output_file = encode_image(rgb)
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[output_file],
            model=cache.model_id(Role.SEGMENTATION if pipe is None else Role.INPAINT),
            provider="diffusers", seed=seed, width=picture.width, height=picture.height,
            extra={
                "mode": "composite" if pipe is None else "inpaint",
                "segmentation_model": cache.model_id(Role.SEGMENTATION),
                "foreground_fraction": round(float(alpha.mean()), 4),
                "mask_expansion": expansion,
                "blend_strength": blend,
                "background_prompt": params.background_prompt,
                **options,
            },
        )
