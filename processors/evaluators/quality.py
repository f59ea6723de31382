"""The weight-free default evaluator: bounded no-reference image-quality signals.

Every signal is mapped to 0..1 (1 = no problem) and the score is their weighted mean. The image
is first reduced (area interpolation) so its long side is at most ``MEASURE_SIDE`` px: the
Laplacian's variance depends on scale, and this makes 512 px and 4096 px outputs comparable.

=============  ======================================================  ==============  =========
signal         raw measure                                             mapping         weight
=============  ======================================================  ==============  =========
sharpness      variance ``v`` of the Laplacian of the luma             1 - 2^(-v/100)  0.5 (0.4)
exposure       fraction ``f`` of luma pixels at exactly 0 or 255       1 at f ≤ 2 %,   0.3 (0.25)
                                                                       0 at f ≥ 30 %
colourfulness  Hasler–Süsstrunk ``M`` (2003)                           min(1, M/33)    0.2 (0.15)
alpha          cut-outs only: transparent ``t``, opaque ``o``,         see below       (0.2)
               semi-transparent ``p = 1 - t - o`` fractions
=============  ======================================================  ==============  =========

Weights in brackets apply when the alpha signal is present. Why these curves: a Laplacian
variance of 100 is the usual blur threshold, so it maps to 0.5 and 400 to 0.94; a few percent
of clipped pixels are specular highlights, a third of the frame clipped is unusable; ``M = 33``
is "moderately colourful" on Hasler and Süsstrunk's scale. Alpha is judged for images with an
alpha channel that is not fully opaque, or when the context expects a cut-out:
``alpha = min(1, (1-t)/0.02) * min(1, t/0.02) * clamp((0.4 - p)/0.3)`` — some foreground and some
background (2 % each for full marks) and a matte that is semi-transparent only along its edges
(≤ 10 % of pixels). An all-transparent cut-out scores 0 overall. For cut-outs, the other signals
are measured on the foreground only (the colour of transparent pixels is meaningless).

A signal below ``WEAK`` is named in the reasons, e.g. ``"blurry (sharpness 0.12)"``.
Known limit: a studio shot on a pure-white (255) background counts as clipped; such deployments
should judge cut-outs or use a model-based evaluator.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from processors.evaluators.base import Evaluation, EvaluationContext

MEASURE_SIDE = 512  # px; the scale every signal is measured at (see the module doc)
BLUR_HALF_VARIANCE = 100.0  # Laplacian variance that maps to sharpness 0.5
CLIP_OK, CLIP_BAD = 0.02, 0.30  # clipped-pixel fractions mapping to exposure 1 and 0
COLOURFUL_FULL = 33.0  # Hasler–Süsstrunk M for full marks ("moderately colourful")
ALPHA_MIN_SHARE = 0.02  # foreground and background each need this share for full marks
MATTE_OK, MATTE_BAD = 0.10, 0.40  # semi-transparent fractions mapping to 1 and 0
WEAK = 0.5  # a signal below this is named in the reasons
WEIGHTS = {"sharpness": 0.5, "exposure": 0.3, "colourfulness": 0.2}
WEIGHTS_WITH_ALPHA = {"sharpness": 0.4, "exposure": 0.25, "colourfulness": 0.15, "alpha": 0.2}


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def _ramp_down(x: float, ok: float, bad: float) -> float:
    """1 at or below ``ok``, 0 at or above ``bad``, linear between."""
    return _clamp((bad - x) / (bad - ok))


def _arrays(image: Image.Image, expects_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 at the measuring scale, and the alpha channel when it is to be judged."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    rgba = np.asarray(image.convert("RGBA") if has_alpha else image.convert("RGB"))
    height, width = rgba.shape[:2]
    scale = MEASURE_SIDE / max(height, width)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
    if not has_alpha:
        return rgba, None
    alpha = rgba[..., 3]
    if not expects_alpha and bool((alpha == 255).all()):
        return rgba[..., :3], None  # an opaque RGBA image is an ordinary picture
    return np.ascontiguousarray(rgba[..., :3]), alpha


def sharpness(luma: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    lap = cv2.Laplacian(luma, cv2.CV_64F)
    values = lap[mask] if mask is not None and mask.any() else lap
    variance = float(values.var()) if values.size else 0.0
    return 1.0 - 2.0 ** (-variance / BLUR_HALF_VARIANCE), variance


def exposure(luma: np.ndarray, mask: np.ndarray | None) -> tuple[float, float, float]:
    values = luma[mask] if mask is not None and mask.any() else luma.ravel()
    low, high = float((values == 0).mean()), float((values == 255).mean())
    return _ramp_down(low + high, CLIP_OK, CLIP_BAD), low, high


def colourfulness(rgb: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Hasler & Süsstrunk, "Measuring colourfulness in natural images" (2003)."""
    pixels = (rgb[mask] if mask is not None and mask.any() else rgb.reshape(-1, 3)).astype(np.float64)
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    m = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return _clamp(m / COLOURFUL_FULL), m


def alpha_sanity(alpha: np.ndarray) -> tuple[float, float, float]:
    transparent, opaque = float((alpha == 0).mean()), float((alpha == 255).mean())
    partial = max(0.0, 1.0 - transparent - opaque)
    coverage = _clamp((1.0 - transparent) / ALPHA_MIN_SHARE) * _clamp(transparent / ALPHA_MIN_SHARE)
    return coverage * _ramp_down(partial, MATTE_OK, MATTE_BAD), transparent, opaque


class QualityEvaluator:
    """``evaluation_provider = "quality"``: needs no weights, runs in milliseconds on a CPU."""

    name = "quality"

    def evaluate(self, image: Image.Image, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        rgb, alpha = _arrays(image, context.expects_alpha)
        luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        mask = None
        if alpha is not None:  # foreground, eroded so the cut-out's own edge is not "detail"
            mask = cv2.erode((alpha > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
        scores: dict[str, float] = {}
        signals: dict[str, float] = {}
        scores["sharpness"], signals["laplacian_variance"] = sharpness(luma, mask)
        scores["exposure"], signals["black_fraction"], signals["white_fraction"] = exposure(luma, mask)
        scores["colourfulness"], signals["hasler_susstrunk"] = colourfulness(rgb, mask)
        weights = WEIGHTS
        if alpha is not None:
            scores["alpha"], signals["transparent_fraction"], signals["opaque_fraction"] = alpha_sanity(alpha)
            weights = WEIGHTS_WITH_ALPHA
        score = _clamp(sum(weights[k] * scores[k] for k in weights))
        if alpha is not None and signals["transparent_fraction"] >= 1.0:
            score = 0.0  # an empty cut-out is no result at all
        signals.update(scores)
        return Evaluation(score, tuple(self._reasons(scores, signals)), signals, self.name)

    @staticmethod
    def _reasons(scores: dict[str, float], signals: dict[str, float]) -> list[str]:
        reasons = []
        if scores["sharpness"] < WEAK:
            reasons.append(f"blurry (sharpness {scores['sharpness']:.2f})")
        if scores["exposure"] < WEAK:
            black, white = signals["black_fraction"], signals["white_fraction"]
            kind = "overexposed" if white >= black else "underexposed"
            reasons.append(f"{kind}: clipped exposure (exposure {scores['exposure']:.2f}; "
                           f"{black + white:.0%} of pixels at 0 or 255)")
        if scores["colourfulness"] < WEAK:
            reasons.append(f"dull colours (colourfulness {scores['colourfulness']:.2f})")
        if "alpha" in scores and scores["alpha"] < WEAK:
            t, o = signals["transparent_fraction"], signals["opaque_fraction"]
            what = ("every pixel transparent" if t >= 1.0
                    else "soft, semi-transparent matte" if 1.0 - t - o > MATTE_OK
                    else "nothing cut out" if t < ALPHA_MIN_SHARE else "almost no foreground")
            reasons.append(f"bad cut-out: {what} (alpha {scores['alpha']:.2f}; "
                           f"{t:.0%} transparent, {o:.0%} opaque)")
        return reasons
