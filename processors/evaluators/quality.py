"""The weight-free default evaluator: no-reference image-quality signals that tell a good image
from a bad one (calibrated on :mod:`processors.evaluators.calibration`, docs/EVALUATION.md).

Each signal is mapped to 0..1 (1 = no problem: every mapping is flat at 1 over the range clean
photographs span) and the score is their product times a mild colourfulness factor, so one
severe defect is enough to fail an image and several mild ones add up. Most signals are measured
on the image reduced (area interpolation) to ``MEASURE_SIDE`` px on its long side, so 512 px and
4096 px outputs compare; blockiness and banding are measured at the original resolution (a resize
would hide the 8x8 grid and fill a histogram's gaps), on a centre crop of at most ``GRID_CROP`` px
whose origin lies on the 8x8 grid, so the cost stays bounded.

===============  ====================================================  =========================
signal           raw measure                                           mapping (1 .. 0)
===============  ====================================================  =========================
noise            noise sigma: Immerkaer's (1996) Laplacian-difference  sigma <= 2.5 .. >= 15
                 estimator per 8x8 block, the 10th percentile block
natural          kurtosis of the horizontal luma gradient              >= 4.5 .. <= 2.8
sharpness        Crete et al. (2007) re-blur ratio ``b`` (0 sharp,     b <= 0.38 .. >= 0.8
                 1 blurred)
blockiness       8x8 grid: mean |step| across block edges over the     B <= 1.15 .. >= 3
                 median of the other phases, ``B``
banding          distinct levels / level range, per channel (min)      log scale, >= 0.5 .. <= 0.02
rendered         share of rows and columns exactly constant            <= 3 % .. >= 50 %
contrast         luma standard deviation                               >= 20 .. <= 3
exposure         share with a channel >= 254; share black (all <= 1)  <= 5 .. >= 40 %; <= 15 .. >= 60 %
colour_cast      distance ``d`` from neutral in log-chromaticity       d <= 0.4 .. >= 1.2
                 (log R/G, log B/G): the larger of the 5th-percentile
                 pixel's and the brightest 2 %'s mean
aspect           |log(aspect / requested aspect)| (context size)       <= 0.03 .. >= 0.4
alpha            cut-outs: coverage x soft matte x holes x speckle     see ``alpha_sanity``
colourfulness    Hasler-Susstrunk ``M`` (2003), as a factor            0.85 + 0.15 min(1, M/33)
===============  ====================================================  =========================

Why these curves: clean photographs span noise sigma 0.2-1.8, a Gaussian sigma of 6 added reads
about 3 and pure noise 40; a natural image's gradients are heavy-tailed (kurtosis 5-30) where
noise's are Gaussian (3) or lighter (uniform noise 2.6); the re-blur ratio of clean photos is
0.17-0.35 and a 1 px Gaussian blur pushes it past 0.3; uncompressed photos have B 1.00-1.03 and
JPEG at quality 20 already 1.6; clean photos fill >= 80 % of their levels, 24-level posterisation
9 %; a real photo has no exactly constant row, an aborted decode leaves whole rows flat; a
white-balance error translates every colour in log-chromaticity, so even the most neutral pixels
move off neutral, and so do the highlights (clean photos: d <= 0.38). Colourfulness only tempers
the score (a black-and-white photo is not broken).

A signal below ``NAMED`` is named in the reasons, worst first ("noisy", "JPEG artefacts", "banding", "blank
frame", "partly rendered", "colour cast", "blurry", "clipped highlights", "wrong aspect ratio",
"bad cut-out: ..."). Known limits: an image that is fine texture everywhere (grass, gravel) has no
smooth block and reads as noisy; a flat-colour illustration reads as banded; a studio shot on a
pure-white background counts as clipped.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from processors.evaluators.base import Evaluation, EvaluationContext

MEASURE_SIDE = 512  # px, the scale the scale-dependent signals are measured at (see the module doc)
GRID_CROP = 1024  # px, the most of each side blockiness and banding read (a grid-aligned crop)
NAMED = 0.75  # a signal below this is named in the reasons (a quarter off the score)
WEAK = 0.5  # colourfulness, only a factor, is named below this
NOISE_OK, NOISE_BAD = 2.5, 15.0  # noise sigma (8-bit levels)
KURTOSIS_OK, KURTOSIS_BAD = 4.5, 2.8
BLUR_OK, BLUR_BAD = 0.38, 0.8  # Crete re-blur ratio
BLOCK_OK, BLOCK_BAD = 1.15, 3.0
LEVELS_OK, LEVELS_BAD = 0.5, 0.02  # occupied share of the level range
FLAT_OK, FLAT_BAD = 0.03, 0.5  # share of constant rows + columns
CONTRAST_OK, CONTRAST_BAD = 20.0, 3.0  # luma standard deviation
WHITE_OK, WHITE_BAD = 0.05, 0.4  # share of pixels with a channel at >= 254
BLACK_OK, BLACK_BAD = 0.15, 0.6  # share of pixels black (every channel <= 1): dark backdrops are common
CAST_OK, CAST_BAD = 0.4, 1.2  # log-chromaticity distance from neutral
ASPECT_OK, ASPECT_BAD = 0.03, 0.4  # |log aspect ratio error|
COLOURFUL_FULL = 33.0  # Hasler-Susstrunk M for full marks ("moderately colourful")
COLOURFUL_WEIGHT = 0.15  # the most colourfulness can take off the score
ALPHA_MIN_SHARE = 0.02  # foreground and background each need this share for full marks
MATTE_OK, MATTE_BAD = 0.10, 0.40  # semi-transparent share of the frame
HOLES_OK, HOLES_BAD = 0.002, 0.08  # share of the subject in small holes
SPECKS_OK, SPECKS_BAD = 2, 40  # stray specks (small islands or pinholes)
SMALL_PART = 0.02  # a hole or island below this share of the subject is a defect, not a shape


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def _ramp(x: float, ok: float, bad: float) -> float:
    """1 at ``ok``, 0 at ``bad``, linear between (either direction)."""
    return _clamp((bad - x) / (bad - ok))


def _prepare(image: Image.Image, expects_alpha: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(RGB of the original pixels in a grid-aligned centre crop, RGB at the measuring scale,
    alpha at the measuring scale or None). The full image is never copied into an array, so a
    4096 px output costs about what a 1024 px one does."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    mode = "RGBA" if has_alpha else "RGB"
    if image.mode not in ("RGB", "RGBA", "L", "LA") or "transparency" in image.info:
        image = image.convert(mode)  # palettes and odd modes cannot be box-filtered
    width, height = image.size
    scale = MEASURE_SIDE / max(width, height)
    small = image
    if scale < 1.0:  # area averaging (a box filter), as cv2's INTER_AREA
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    left, top = max(0, (width - GRID_CROP) // 2) // 8 * 8, max(0, (height - GRID_CROP) // 2) // 8 * 8
    crop = image.crop((left, top, min(width, left + GRID_CROP), min(height, top + GRID_CROP)))
    small_array = np.asarray(small.convert(mode))
    alpha = small_array[..., 3] if has_alpha else None
    if alpha is not None and not expects_alpha and image.getchannel("A").getextrema()[0] == 255:
        alpha = None  # an opaque RGBA image is an ordinary picture
    return np.asarray(crop.convert("RGB")), np.ascontiguousarray(small_array[..., :3]), alpha


def _blocks(a: np.ndarray, size: int = 8) -> np.ndarray:
    h, w = a.shape[0] // size * size, a.shape[1] // size * size
    return a[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2).reshape(h // size, w // size, size * size)


def _sample(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Every other pixel of every other row (of the subject): the colour statistics need no more."""
    rgb = rgb[::2, ::2]
    return rgb[mask[::2, ::2]] if mask is not None else rgb.reshape(-1, 3)


def noise_sigma(luma: np.ndarray, mask: np.ndarray | None) -> float:
    """Immerkaer's fast noise variance estimator, read in the smoothest blocks: detail raises a
    block's residual, noise raises every block's."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    residual = np.abs(cv2.filter2D(luma, -1, kernel, borderType=cv2.BORDER_REFLECT))
    per_block = _blocks(residual).mean(axis=2) * math.sqrt(math.pi / 2) / 6
    if mask is not None:
        per_block = per_block[_blocks(mask).all(axis=2)]
    return float(np.percentile(per_block, 10)) if per_block.size else 0.0


def gradient_kurtosis(luma: np.ndarray, mask: np.ndarray | None) -> float:
    grad = np.diff(luma, axis=1)
    if mask is not None:
        grad = grad[mask[:, 1:] & mask[:, :-1]]
    centred = grad.ravel() - (grad.mean() if grad.size else 0.0)
    square = centred * centred
    var = float(square.mean()) if grad.size else 0.0
    # A flat frame has no gradient statistics: the contrast signal judges it.
    return float((square * square).mean()) / var ** 2 if var > 1e-6 else KURTOSIS_OK


def reblur(luma: np.ndarray, mask: np.ndarray | None) -> float:
    """Crete et al. 2007: how little a strong 9-tap blur changes the neighbour differences (1: the
    image was already blurred). The worse of the two directions."""
    worst = 0.0
    for axis, ksize in ((0, (1, 9)), (1, (9, 1))):
        d = np.abs(np.diff(luma, axis=axis))
        kept = np.maximum(0.0, d - np.abs(np.diff(cv2.blur(luma, ksize), axis=axis)))
        if mask is not None:
            both = mask[1:] & mask[:-1] if axis == 0 else mask[:, 1:] & mask[:, :-1]
            d, kept = d[both], kept[both]
        total = float(d.sum())
        if total > 1e-6:
            worst = max(worst, 1.0 - float(kept.sum()) / total)
    return worst


def blockiness(crop_luma: np.ndarray) -> float:
    """The 8x8 grid's edge steps against the other phases', both directions, on original pixels
    (a crop whose origin lies on the grid)."""
    crop = crop_luma.astype(np.float32)
    ratios = []
    for steps in (np.abs(np.diff(crop, axis=1)).mean(axis=0), np.abs(np.diff(crop, axis=0)).mean(axis=1)):
        if steps.size < 16:
            continue
        phases = np.array([steps[p::8].mean() for p in range(8)])
        ratios.append(phases[7] / max(float(np.median(phases[:7])), 0.5))
    return float(np.mean(ratios)) if ratios else 1.0


def level_occupancy(crop_rgb: np.ndarray) -> float:
    """Distinct levels over the level range, per channel, the lowest: posterisation leaves gaps
    (read on original pixels: any resize would fill them)."""
    sample = crop_rgb.reshape(-1, 3)
    worst = 1.0
    for c in range(3):
        used = np.flatnonzero(np.bincount(sample[:, c], minlength=256))
        span = int(used[-1] - used[0]) + 1 if used.size else 0
        if span >= 16:  # a near-uniform channel says nothing about banding
            worst = min(worst, used.size / span)
    return worst


def constant_lines(luma: np.ndarray) -> float:
    """Share of rows or of columns whose pixels are all identical: a real photo has none."""
    rows = float((luma.max(axis=1) == luma.min(axis=1)).mean())
    cols = float((luma.max(axis=0) == luma.min(axis=0)).mean())
    return max(rows, cols)


def cast_distance(rgb: np.ndarray, mask: np.ndarray | None) -> float:
    """How far from neutral, in log-chromaticity, the most neutral well-exposed pixels lie and
    the brightest ones average, the larger: a white-balance gain moves both, and one of them
    survives a scene whose colours happen to cancel the cast."""
    pixels = _sample(rgb, mask)
    pixels = pixels[((pixels > 12) & (pixels < 250)).all(axis=1)].astype(np.float32)
    if len(pixels) < 64:
        return 0.0
    logs = np.log(pixels)
    u, v = logs[:, 0] - logs[:, 1], logs[:, 2] - logs[:, 1]
    neutral = float(np.percentile(np.hypot(u, v), 5))  # grey-world: the most neutral pixels
    brightness = pixels.sum(axis=1)
    top = brightness >= np.percentile(brightness, 98)  # white patch: the brightest unclipped ones
    return max(neutral, float(np.hypot(u[top].mean(), v[top].mean())))


def colourfulness(rgb: np.ndarray, mask: np.ndarray | None) -> float:
    """Hasler & Susstrunk, "Measuring colourfulness in natural images" (2003)."""
    pixels = _sample(rgb, mask).astype(np.float32)
    if not len(pixels):
        return 0.0
    rg, yb = pixels[:, 0] - pixels[:, 1], 0.5 * (pixels[:, 0] + pixels[:, 1]) - pixels[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def alpha_sanity(alpha: np.ndarray) -> dict[str, float]:
    """Coverage (some subject, some background), a matte semi-transparent only at its edges, no
    small holes in the subject, no stray specks."""
    transparent, opaque = float((alpha == 0).mean()), float((alpha == 255).mean())
    partial = max(0.0, 1.0 - transparent - opaque)
    subject = (alpha >= 128).astype(np.uint8)
    area = max(1, int(subject.sum()))
    n, _, stats, _ = cv2.connectedComponentsWithStats(subject, connectivity=8)
    islands = stats[1:, cv2.CC_STAT_AREA]
    specks = int((islands < SMALL_PART * area).sum()) if islands.size > 1 else 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(1 - subject, connectivity=4)
    h, w = alpha.shape
    inner = ((stats[1:, cv2.CC_STAT_LEFT] > 0) & (stats[1:, cv2.CC_STAT_TOP] > 0)
             & (stats[1:, cv2.CC_STAT_LEFT] + stats[1:, cv2.CC_STAT_WIDTH] < w)
             & (stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT] < h))
    holes = stats[1:, cv2.CC_STAT_AREA][inner]
    small = holes[holes < SMALL_PART * area]  # a large enclosed gap can be real (an arm on a hip)
    coverage = _clamp((1.0 - transparent) / ALPHA_MIN_SHARE) * _clamp(transparent / ALPHA_MIN_SHARE)
    return {"coverage": coverage, "matte_softness": _ramp(partial, MATTE_OK, MATTE_BAD),
            "holes": _ramp(float(small.sum()) / area, HOLES_OK, HOLES_BAD),
            "specks": _ramp(specks + small.size, SPECKS_OK, SPECKS_BAD),
            "transparent_fraction": transparent, "opaque_fraction": opaque, "hole_share": float(small.sum()) / area,
            "speck_count": float(specks + small.size)}


# signal -> how the reasons name it when it is below NAMED
NAMES = {"noise": "noisy", "natural": "noisy: noise-like statistics", "sharpness": "blurry",
         "blockiness": "JPEG artefacts", "banding": "banding", "rendered": "partly rendered",
         "contrast": "faded: low contrast", "colour_cast": "colour cast", "aspect": "wrong aspect ratio"}


class QualityEvaluator:
    """``evaluation_provider = "quality"``: needs no weights, runs in milliseconds on a CPU."""

    name = "quality"

    def evaluate(self, image: Image.Image, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        crop, rgb, alpha = _prepare(image, context.expects_alpha)
        luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mask = None
        if alpha is not None:  # the subject, eroded so the cut-out's own edge is not "detail"
            mask = cv2.erode((alpha > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
            if not mask.any():
                mask = None  # no subject: the alpha check says so; the pixels are judged whole
        values = luma[mask] if mask is not None else luma.ravel()
        colours = rgb[mask] if mask is not None else rgb.reshape(-1, 3)
        raw = {"noise_sigma": noise_sigma(luma, mask), "gradient_kurtosis": gradient_kurtosis(luma, mask),
               "reblur": reblur(luma, mask), "grid_ratio": blockiness(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)),
               "level_occupancy": level_occupancy(crop), "luma_std": float(values.std()) if values.size else 0.0,
               "black_fraction": float((colours <= 1).all(axis=1).mean()) if colours.size else 0.0,
               "white_fraction": float((colours >= 254).any(axis=1).mean()) if colours.size else 0.0,
               "cast_distance": cast_distance(rgb, mask), "hasler_susstrunk": colourfulness(rgb, mask)}
        scores = {"noise": _ramp(raw["noise_sigma"], NOISE_OK, NOISE_BAD),
                  "natural": _ramp(raw["gradient_kurtosis"], KURTOSIS_OK, KURTOSIS_BAD),
                  "sharpness": _ramp(raw["reblur"], BLUR_OK, BLUR_BAD),
                  "blockiness": _ramp(raw["grid_ratio"], BLOCK_OK, BLOCK_BAD),
                  "banding": _clamp(math.log(max(raw["level_occupancy"], 1e-6) / LEVELS_BAD)
                                    / math.log(LEVELS_OK / LEVELS_BAD)),
                  "contrast": _ramp(raw["luma_std"], CONTRAST_OK, CONTRAST_BAD),
                  "exposure": (_ramp(raw["white_fraction"], WHITE_OK, WHITE_BAD)
                               * _ramp(raw["black_fraction"], BLACK_OK, BLACK_BAD)),
                  "colour_cast": _ramp(raw["cast_distance"], CAST_OK, CAST_BAD)}
        if alpha is None:  # a cut-out's transparent rows are legitimately constant
            raw["constant_lines"] = constant_lines(luma)
            scores["rendered"] = _ramp(raw["constant_lines"], FLAT_OK, FLAT_BAD)
        if context.width and context.height:
            width, height = image.size
            raw["aspect_error"] = abs(math.log((width / height) / (context.width / context.height)))
            scores["aspect"] = _ramp(raw["aspect_error"], ASPECT_OK, ASPECT_BAD)
        if alpha is not None:
            matte = alpha_sanity(alpha)
            scores["alpha"] = matte["coverage"] * matte["matte_softness"] * matte["holes"] * matte["specks"]
            raw.update(matte)
        scores["colourfulness"] = _clamp(raw["hasler_susstrunk"] / COLOURFUL_FULL)
        score = math.prod(v for k, v in scores.items() if k != "colourfulness")
        score *= 1.0 - COLOURFUL_WEIGHT * (1.0 - scores["colourfulness"])
        if alpha is not None and raw["transparent_fraction"] >= 1.0:
            score = 0.0  # an empty cut-out is no result at all
        signals = {**raw, **scores}
        return Evaluation(_clamp(score), tuple(self._reasons(scores, signals)), signals, self.name)

    @staticmethod
    def _reasons(scores: dict[str, float], signals: dict[str, float]) -> list[str]:
        """The weak signals, worst first, each with its score. Of an empty frame only that, and its
        matte's fault if it is a cut-out: the other pixel signals have nothing to read."""
        blank = signals["luma_std"] <= CONTRAST_BAD
        reasons = [f"blank frame (contrast {scores['contrast']:.2f})"] if blank else []
        for key in sorted(scores, key=scores.get):
            value = scores[key]
            if value >= NAMED:
                break
            if blank and key != "alpha":
                continue
            if key in NAMES:
                reasons.append(f"{NAMES[key]} ({key} {value:.2f})")
            elif key == "exposure":
                black, white = signals["black_fraction"], signals["white_fraction"]
                kind = "clipped highlights: overexposed" if white >= black else "clipped shadows: underexposed"
                reasons.append(f"{kind} (exposure {value:.2f}; {white:.0%} of pixels with a channel "
                               f"at >= 254, {black:.0%} black)")
            elif key == "colourfulness" and value < WEAK:
                reasons.append(f"dull colours (colourfulness {value:.2f})")
            elif key == "alpha":
                reasons.append(f"bad cut-out: {QualityEvaluator._matte_fault(signals)} (alpha {value:.2f}; "
                               f"{signals['transparent_fraction']:.0%} transparent, "
                               f"{signals['opaque_fraction']:.0%} opaque)")
        return reasons

    @staticmethod
    def _matte_fault(signals: dict[str, float]) -> str:
        t = signals["transparent_fraction"]
        if t >= 1.0:
            return "every pixel transparent"
        if signals["matte_softness"] < NAMED:
            return "soft, semi-transparent matte"
        if signals["coverage"] < NAMED:
            return "nothing cut out" if t < ALPHA_MIN_SHARE else "almost no foreground"
        faults = {"holes": "holes in the subject", "specks": "speckled, fragmented matte"}
        return faults[min(faults, key=signals.get)]
