"""BACKGROUND_REMOVE: a transparent PNG (or lossless WebP) of the subject.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalBackgroundRemove`, weight-free): OpenCV GrabCut seeded with a
  centred rectangle whose outer 8% is taken as background (the subject of a fashion shot is in
  the middle), five iterations on a copy of at most 512 px, speckle removed, the mask upsampled
  with soft edges and used as the alpha channel. If the input already had an alpha channel the
  two are multiplied, so nothing transparent becomes opaque. GrabCut's k-means is seeded, so the
  same image gives the same mask.
* ``transformers`` (:class:`TransformersBackgroundRemove`): the registry's semantic segmentation
  model (DeepLabV3-MobileViT in production, a tiny DPT offline). Its logits are resized
  bilinearly to the image and the alpha is ``1 - P(background labels)`` (the labels named in the
  spec's ``background_label_ids``, else the one called "background"): a soft matte, not a hard
  cut. An input alpha channel is multiplied in, as above. Deterministic (no sampling).

``output_format``: ``png`` (default, as the seed says "outputs transparent PNG") or ``webp``
(lossless, colour kept under transparent pixels).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import (
    GRABCUT_ITERATIONS,
    StepCounter,
    encode_image,
    grabcut_alpha,
    load_picture,
    to_uint8,
)
from gpu_consumers.handlers.model_common import ModelProgress, foreground_alpha, provider_options
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import BackgroundRemoveParams

MODEL_NAME = "opencv-grabcut"


class ClassicalBackgroundRemove:
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_REMOVE
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def run(self, params: BackgroundRemoveParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        picture = load_picture(ctx, params.image_url, "image_url")
        fmt = params.output_format or "png"
        ctx.cancel.raise_if_cancelled()

        # 2. prepare: a progress step per GrabCut iteration, one for the alpha, one for encoding
        steps = StepCounter(ctx, GRABCUT_ITERATIONS + 2)

        # 3. process
        alpha = grabcut_alpha(picture.rgb, on_iteration=steps.step)
        if picture.alpha is not None:
            alpha = alpha * (picture.alpha.astype(np.float32) / 255.0)
        alpha_u8 = to_uint8(alpha, 255.0)
        steps.step()

        # 4. encode
        output = encode_image(picture.rgb, alpha_u8, fmt=fmt)
        steps.finish()

        # 5. return
        return HandlerResult(
            outputs=[output],
            model=MODEL_NAME,
            provider="classical",
            seed=None,
            width=picture.width,
            height=picture.height,
            extra={"foreground_fraction": round(float(alpha.mean()), 4), "output_format": fmt},
        )


# --------------------------------------------------------------------------- model providers


class TransformersBackgroundRemove:
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_REMOVE
    providers: ClassVar[tuple[str, ...]] = ("transformers",)

    def run(self, params: BackgroundRemoveParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        provider_options(params.provider_config, {})  # no settings: any key is a mistake
        picture = load_picture(ctx, params.image_url, "image_url")
        fmt = params.output_format or "png"
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        segmenter = cache.segmentation()

        # 3. run: the model's foreground probability is the alpha
        progress = ModelProgress(ctx, 1)
        alpha = foreground_alpha(segmenter, picture.rgb, ctx.device)
        if picture.alpha is not None:
            alpha = alpha * (picture.alpha.astype(np.float32) / 255.0)
        progress.advance()

        # 4. encode
        output = encode_image(picture.rgb, to_uint8(alpha, 255.0), fmt=fmt)
        progress.finish()

        # 5. return
        return HandlerResult(
            outputs=[output], model=cache.model_id(Role.SEGMENTATION), provider="transformers",
            seed=None, width=picture.width, height=picture.height,
            extra={"foreground_fraction": round(float(alpha.mean()), 4), "output_format": fmt},
        )
