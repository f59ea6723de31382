"""IMAGE_ADJUSTER: brightness, contrast, saturation and warmth, exact and deterministic.

There is no model: the adjustment is plain pixel math, so the only provider is ``classical``.

The image is taken as float32 RGB in [0, 1] (``x = v / 255``). Each parameter is in -1..1 and
0 (or None) means "unchanged"; the steps run in this fixed order, each followed by a clip to
[0, 1] so the next step sees a valid image:

1. brightness ``b``:  ``x' = x * (1 + b)``              (b = -1 gives black)
2. contrast ``c``:    ``x' = (x - 0.5) * (1 + c) + 0.5``  (c = -1 gives flat mid-grey)
3. saturation ``s``:  ``Y = 0.299 R + 0.587 G + 0.114 B`` (Rec. 601 luma);
                      ``x' = Y + (x - Y) * (1 + s)``     (s = -1 gives greyscale)
4. warmth ``w``:      ``R' = R * (1 + 0.2 w)``, ``B' = B * (1 - 0.2 w)``, G unchanged

The result is rounded once to uint8 (``rint(x * 255)``, half to even). A step whose parameter is
0 or None is skipped, so all-zero parameters return the input pixels exactly. The alpha channel,
if any, is copied unchanged. ``prompt`` is accepted (the seed lists it) but no model reads it;
it is recorded in the result's ``extra`` so that a caller can see it arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import StepCounter, encode_image, load_picture, to_uint8
from schemas.enums import TaskType
from schemas.task_params import ImageAdjusterParams

# Rec. 601 luma weights (the same ones Pillow's convert("L") uses).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Warmth shifts red up and blue down by at most 20%: a strong but not absurd colour cast at |w| = 1.
WARMTH_GAIN = 0.2
MODEL_NAME = "numpy-color-adjust"


def brightness(x: np.ndarray, b: float) -> np.ndarray:
    return x * np.float32(1.0 + b)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    return (x - np.float32(0.5)) * np.float32(1.0 + c) + np.float32(0.5)


def saturation(x: np.ndarray, s: float) -> np.ndarray:
    # Written out element-wise (not a matmul) so the float32 sum is the same on every CPU.
    r, g, b = LUMA_WEIGHTS
    luma = (x[..., 0] * r + x[..., 1] * g + x[..., 2] * b)[..., None]
    return luma + (x - luma) * np.float32(1.0 + s)


def warmth(x: np.ndarray, w: float) -> np.ndarray:
    gains = np.array([1.0 + WARMTH_GAIN * w, 1.0, 1.0 - WARMTH_GAIN * w], dtype=np.float32)
    return x * gains


# The fixed order of the steps, by parameter name.
ADJUSTMENTS = (
    ("brightness", brightness),
    ("contrast", contrast),
    ("saturation", saturation),
    ("warmth", warmth),
)


def adjust(rgb: np.ndarray, params: ImageAdjusterParams,
           on_step: Callable[[], None] = lambda: None) -> np.ndarray:
    """Apply the non-zero adjustments of ``params`` to uint8 RGB; return uint8 RGB."""
    active = [(name, fn, getattr(params, name)) for name, fn in ADJUSTMENTS if getattr(params, name)]
    if not active:
        return rgb  # the identity, exactly: nothing is converted or rounded
    x = rgb.astype(np.float32) / np.float32(255.0)
    for _name, fn, value in active:
        x = np.clip(fn(x, float(value)), 0.0, 1.0)
        on_step()
    return to_uint8(x, 255.0)


class ImageAdjusterHandler:
    task_type: ClassVar[TaskType] = TaskType.IMAGE_ADJUSTER
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def run(self, params: ImageAdjusterParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs (the ranges were checked by the params model)
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. prepare: one progress step per active adjustment, plus encoding
        applied = {name: float(getattr(params, name)) for name, _ in ADJUSTMENTS if getattr(params, name)}
        steps = StepCounter(ctx, len(applied) + 1)

        # 3. process
        rgb = adjust(picture.rgb, params, on_step=steps.step)

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
            extra={"applied": applied, "prompt": params.prompt},
        )
