"""DETAIL_ENHANCER: general detail and local-contrast enhancement.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalDetailEnhancer`, weight-free), described below;
* the diffusion provider (``diffusers``, low-strength img2img guided by ``prompt``) is to be
  added below, in the same module.

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
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from gpu_consumers.handler import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import StepCounter, encode_image, load_picture, to_uint8, unsharp
from schemas.enums import TaskType
from schemas.task_params import DetailEnhancerParams

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
# The diffusion provider (provider_type "diffusers") goes here.
