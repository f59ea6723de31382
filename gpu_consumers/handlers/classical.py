"""Weight-free building blocks shared by the ``classical`` provider of several task types.

Input and output (every classical handler):

* :func:`load_picture` fetches an image through ``ctx.fetch.fetch_image(url, mode=None)`` (a
  PIL image in its own mode, so alpha survives), bakes any EXIF orientation into the pixels
  (outputs carry no metadata, so a tag left behind would be lost and the picture would show
  rotated), refuses images under 8x8 px, and splits it into 8-bit RGB plus optional 8-bit alpha.
* :func:`encode_image` writes PNG (or lossless WebP) through Pillow with no metadata and fixed
  settings, so equal pixels always give equal bytes.

Foreground (BACKGROUND_REMOVE, BACKGROUND_FIX): :func:`grabcut_alpha` runs OpenCV GrabCut
initialised with a centred rectangle (fashion shots put the subject in the middle).

Faces (FACE_ENHANCER, REFINE) are found by :mod:`.face_detection`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from gpu_consumers.errors import InvalidInput, ProviderError
from gpu_consumers.handlers.base import OutputFile, TaskContext

# Below 8 px a side there is no subject to segment or enhance (and GrabCut has too few samples).
MIN_SIDE_PX = 8
# zlib level 6: Pillow's default; fixed here so the bytes never depend on a library default.
PNG_COMPRESS_LEVEL = 6


# --------------------------------------------------------------------------- progress


class StepCounter:
    """Progress over a known number of steps, with a cancel check at every step boundary."""

    def __init__(self, ctx: TaskContext, total_steps: int) -> None:
        self._ctx = ctx
        self._total = max(total_steps, 1)
        self._done = 0

    def step(self) -> None:
        """One step finished: report it, then stop here if the user cancelled meanwhile."""
        self._done = min(self._done + 1, self._total)
        self._ctx.progress(self._done / self._total)
        self._ctx.cancel.raise_if_cancelled()

    def finish(self) -> None:
        """The output is encoded; no cancel check, the work is complete."""
        self._done = self._total
        self._ctx.progress(1.0)


# --------------------------------------------------------------------------- input / output


@dataclass(frozen=True)
class Picture:
    rgb: np.ndarray  # uint8, H x W x 3
    alpha: np.ndarray | None  # uint8, H x W, or None when the input had no alpha channel

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def to_picture(image: Image.Image, field: str) -> Picture:
    """Split a PIL image into RGB and optional alpha, checking it is big enough to work on."""
    if not isinstance(image, Image.Image):
        raise InvalidInput(f"{field}: the fetched input is not an image")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"{field}: the image could not be decoded ({exc}); send a valid image") from exc
    if image.width < MIN_SIDE_PX or image.height < MIN_SIDE_PX:
        raise InvalidInput(
            f"{field}: image is {image.width}x{image.height} px; at least "
            f"{MIN_SIDE_PX}x{MIN_SIDE_PX} is needed"
        )
    if _has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"))
        return Picture(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]))
    return Picture(np.ascontiguousarray(np.asarray(image.convert("RGB"))), None)


def load_picture(ctx: TaskContext, url: str, field: str) -> Picture:
    # mode=None: the fetcher's default converts to RGB, which would drop an alpha channel.
    return to_picture(ctx.fetch.fetch_image(url, mode=None), field)


def to_uint8(values: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Round once (half to even, ``numpy.rint``) and clip into 0..255."""
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None = None, fmt: str = "png") -> OutputFile:
    """PNG or lossless WebP, no metadata: equal pixels give equal bytes."""
    array = rgb if alpha is None else np.dstack([rgb, alpha])
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    buffer = io.BytesIO()
    if fmt == "webp":
        # exact=True keeps the colour under fully transparent pixels (lossless really lossless).
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=4, exact=True)
        return OutputFile(buffer.getvalue(), "image/webp", ".webp")
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return OutputFile(buffer.getvalue(), "image/png", ".png")


# --------------------------------------------------------------------------- shared filters


def unsharp(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """``image + amount * (image - gaussian(image, sigma))`` on float32 (no clipping)."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    return image + amount * (image - blurred)


def nl_means(rgb: np.ndarray, h: float) -> np.ndarray:
    """OpenCV's non-local-means colour denoiser with its documented default windows (7, 21)."""
    return cv2.fastNlMeansDenoisingColored(rgb, None, h, h, 7, 21)


# --------------------------------------------------------------------------- foreground

# GrabCut is O(pixels x iterations); 512 px on the long side keeps it well under a second and
# the mask is upsampled with soft edges afterwards.
GRABCUT_MAX_SIDE = 512
# Five iterations: the GMMs have settled by then on studio shots; each one is a progress step.
GRABCUT_ITERATIONS = 5
# The initial rectangle leaves 8% of each side as known background.
GRABCUT_MARGIN_FRAC = 0.08
# Foreground blobs under 1% of the largest one are speckle, not subject.
MIN_COMPONENT_FRAC = 0.01


def grabcut_alpha(rgb: np.ndarray, on_iteration: Callable[[], None] = lambda: None) -> np.ndarray:
    """Foreground alpha (float32 H x W in 0..1) from GrabCut seeded with a centred rectangle."""
    height, width = rgb.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(height, width))
    work = rgb
    if scale < 1.0:
        small = (max(round(width * scale), MIN_SIDE_PX), max(round(height * scale), MIN_SIDE_PX))
        work = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
    wh, ww = work.shape[:2]
    mx, my = max(1, round(ww * GRABCUT_MARGIN_FRAC)), max(1, round(wh * GRABCUT_MARGIN_FRAC))
    mask = np.zeros((wh, ww), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models with k-means on OpenCV's RNG: seed it for repeatable masks.
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(work, mask, (mx, my, ww - 2 * mx, wh - 2 * my), bgd, fgd, 1, cv2.GC_INIT_WITH_RECT)
        on_iteration()
        for _ in range(GRABCUT_ITERATIONS - 1):
            cv2.grabCut(work, mask, None, bgd, fgd, 1, cv2.GC_EVAL)
            on_iteration()
    except cv2.error as exc:
        raise ProviderError(f"OpenCV GrabCut failed on a {width}x{height} image: {exc}") from exc
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    # Open then close: drop isolated pixels and fill pinholes before measuring blobs.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero(areas >= MIN_COMPONENT_FRAC * areas.max()) + 1
        fg = np.isin(labels, keep).astype(np.uint8)
    alpha = fg.astype(np.float32)
    if scale < 1.0:
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    # A one-pixel Gaussian anti-aliases the staircase edge without eating into the subject.
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=max(1.0, 0.5 / scale))
    return np.clip(alpha, 0.0, 1.0)
