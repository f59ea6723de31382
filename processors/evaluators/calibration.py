"""The evaluator calibration set: real photographs, graded corruptions of each, and the metrics
that say whether an evaluator's score agrees with quality (docs/EVALUATION.md).

The photographs ship inside scikit-image (``skimage.data``; only the ones bundled with the wheel,
so nothing is downloaded). Each is reduced to ``PHOTO_SIDE`` px on its long side (a typical output
size), then corrupted by every family at severities 1..4 (4 = worst). Matte families start from a
clean cut-out of the photo (an anti-aliased ellipse as alpha) and are judged with
``expects_alpha=True``. Every sample's context carries the requested size (the clean image's), so
the aspect family can be judged. Everything is seeded: the set is the same on every run.

Metrics per family: the Spearman rank agreement between severity (clean = 0) and the negated
score, averaged over images; the Mann-Whitney AUC of the clean images against the family's
corrupted ones; whether the two strongest severities score below the clean original for every
image. Overall: the AUC of every clean sample against every corrupted one, and the scores of pure
uniform noise and of blank (uniform) frames.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from processors.evaluators.base import EvaluationContext, Evaluator
from schemas.enums import TaskType

PHOTO_SIDE = 512  # px, the long side every photograph is reduced to before corrupting
SEVERITIES = (1, 2, 3, 4)
# Bundled colour (or grey) photographs of everyday scenes, in the order a short run takes them.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "immunohistochemistry", "camera",
          "hubble_deep_field")
BLANK_COLOURS = ((0, 0, 0), (255, 255, 255), (128, 128, 128), (40, 90, 160))
AUC_TARGET = 0.95  # clean vs corrupted (issue 22)
THRESHOLD = 0.7  # the AGENTIC default min_confidence_score: noise and blank frames must score under it

Rgb = np.ndarray  # HxWx3 uint8 (HxWx4 for cut-outs)


def load_photo(name: str) -> Rgb:
    """A bundled photograph as RGB uint8, long side ``PHOTO_SIDE``."""
    from skimage import data  # a dev dependency: only the calibration needs it

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.dstack([image] * 3)
    height, width = image.shape[:2]
    scale = PHOTO_SIDE / max(height, width)
    if scale < 1.0:
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., :3])


# --------------------------------------------------------------------------- corruptions


def _u8(x: np.ndarray) -> Rgb:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noise(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    sigma = (6, 12, 25, 50)[s - 1]
    return _u8(rgb + rng.normal(0.0, sigma, rgb.shape))


def blur(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    return cv2.GaussianBlur(rgb, (0, 0), (1.0, 2.0, 3.5, 6.0)[s - 1])


def jpeg(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=(20, 12, 7, 3)[s - 1])
    return np.asarray(Image.open(buffer).convert("RGB"))


def overexposed(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    return _u8(rgb * (1.6, 2.2, 3.0, 4.5)[s - 1])


def underexposed(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    return _u8(rgb.astype(np.float64) - (50, 90, 130, 170)[s - 1])


def colour_cast(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """A white-balance error: one channel up, its opposite down; the direction is drawn."""
    k = (0.15, 0.3, 0.45, 0.6)[s - 1]
    gains = np.ones(3)
    up, down = rng.permutation(3)[:2]
    gains[up], gains[down] = 1.0 + k, 1.0 - k
    return _u8(rgb * gains)


def banding(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    levels = (24, 12, 6, 3)[s - 1]  # per channel
    step = 255.0 / (levels - 1)
    return _u8(np.rint(rgb / step) * step)


def blank(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """Faded towards a uniform frame of the image's mean colour; severity 4 is uniform."""
    keep = (0.3, 0.12, 0.04, 0.0)[s - 1]
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return _u8(mean + keep * (rgb - mean))


def partly_rendered(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """The bottom of the frame flat, as an aborted decode leaves it (grey or black, drawn)."""
    share = (0.2, 0.35, 0.55, 0.8)[s - 1]
    out = rgb.copy()
    out[round(len(rgb) * (1 - share)):] = (128, 0)[int(rng.integers(2))]
    return out


def aspect(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """Stretched across, or cropped in height (drawn), by a factor, against the requested size."""
    factor = (1.12, 1.25, 1.5, 2.0)[s - 1]
    height, width = rgb.shape[:2]
    if rng.integers(2):
        return cv2.resize(rgb, (round(width * factor), height), interpolation=cv2.INTER_LINEAR)
    top = (height - round(height / factor)) // 2
    return np.ascontiguousarray(rgb[top:top + round(height / factor)])


def clean_matte(shape: tuple[int, ...]) -> np.ndarray:
    """An anti-aliased ellipse covering the centre of the frame: a clean cut-out's alpha."""
    height, width = shape[:2]
    alpha = np.zeros((height, width), np.uint8)
    cv2.ellipse(alpha, (width // 2, height // 2), (width * 3 // 10, height * 4 // 10), 0, 0, 360, 255, -1,
                lineType=cv2.LINE_AA)
    return alpha


def _with_alpha(rgb: Rgb, alpha: np.ndarray) -> Rgb:
    return np.dstack([rgb, alpha])


def matte_holes(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    alpha = clean_matte(rgb.shape)
    ys, xs = np.nonzero(alpha == 255)
    radius = max(2, min(rgb.shape[:2]) // 40)
    for i in rng.choice(len(ys), (2, 5, 10, 20)[s - 1], replace=False):
        cv2.circle(alpha, (int(xs[i]), int(ys[i])), radius, 0, -1)
    return _with_alpha(rgb, alpha)


def matte_speckle(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """Opaque specks strewn over the background and transparent ones over the subject."""
    alpha = clean_matte(rgb.shape)
    count = (8, 25, 60, 150)[s - 1]
    height, width = alpha.shape
    for y, x in zip(rng.integers(0, height - 2, count), rng.integers(0, width - 2, count)):
        alpha[y:y + 2, x:x + 2] = 255 - alpha[y, x]
    return _with_alpha(rgb, alpha)


def matte_soft(rgb: Rgb, s: int, rng: np.random.Generator) -> Rgb:
    """A matte soft everywhere: blurred, and the subject no longer opaque."""
    sigma, opacity = ((3, 0.95), (8, 0.85), (16, 0.7), (30, 0.5))[s - 1]
    alpha = cv2.GaussianBlur(clean_matte(rgb.shape).astype(np.float64), (0, 0), sigma) * opacity
    return _with_alpha(rgb, _u8(alpha))


Corruption = Callable[[Rgb, int, np.random.Generator], Rgb]
# family -> (corruption, reference): the reference is the clean sample it is compared against.
FAMILIES: dict[str, tuple[Corruption, str]] = {
    "noise": (noise, "photo"), "blur": (blur, "photo"), "jpeg": (jpeg, "photo"),
    "overexposed": (overexposed, "photo"), "underexposed": (underexposed, "photo"),
    "colour_cast": (colour_cast, "photo"), "banding": (banding, "photo"), "blank": (blank, "photo"),
    "partly_rendered": (partly_rendered, "photo"), "aspect": (aspect, "photo"),
    "matte_holes": (matte_holes, "cutout"), "matte_speckle": (matte_speckle, "cutout"),
    "matte_soft": (matte_soft, "cutout"),
}


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class Sample:
    photo: str  # the photograph's name; "noise" / "blank" for the synthetic frames
    family: str  # "photo" / "cutout" for the clean references, else a FAMILIES key
    severity: int  # 0: clean
    image: Image.Image
    context: EvaluationContext


def _context(rgb: Rgb, cut_out: bool) -> EvaluationContext:
    height, width = rgb.shape[:2]
    return EvaluationContext(task_type=TaskType.BACKGROUND_REMOVE if cut_out else TaskType.GENERATION,
                             expects_alpha=cut_out, width=width, height=height)


def build_set(photos: Sequence[str] = PHOTOS, severities: Sequence[int] = SEVERITIES,
              families: Iterable[str] = tuple(FAMILIES), seed: int = 0) -> list[Sample]:
    """Clean photos and cut-outs, their corruptions, pure noise and blank frames."""
    samples: list[Sample] = []
    for p, name in enumerate(photos):
        rgb = load_photo(name)
        photo_ctx, cut_ctx = _context(rgb, False), _context(rgb, True)
        samples.append(Sample(name, "photo", 0, Image.fromarray(rgb), photo_ctx))
        samples.append(Sample(name, "cutout", 0, Image.fromarray(_with_alpha(rgb, clean_matte(rgb.shape))),
                              cut_ctx))
        for f, family in enumerate(families):
            corrupt, reference = FAMILIES[family]
            for s in severities:
                rng = np.random.default_rng([seed, p, f, s])
                samples.append(Sample(name, family, s, Image.fromarray(corrupt(rgb, s, rng)),
                                      cut_ctx if reference == "cutout" else photo_ctx))
    side = PHOTO_SIDE
    for k in range(3):
        frame = np.random.default_rng([seed, 1000, k]).integers(0, 256, (side, side, 3), dtype=np.uint8)
        samples.append(Sample("noise", "pure_noise", 0, Image.fromarray(frame), _context(frame, False)))
    for colour in BLANK_COLOURS:
        frame = np.full((side, side, 3), colour, np.uint8)
        samples.append(Sample("blank", "blank_frame", 0, Image.fromarray(frame), _context(frame, False)))
    return samples


# --------------------------------------------------------------------------- the metrics


def _ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks with ties given their mean rank."""
    values = np.asarray(x, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho; 0 when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Mann-Whitney AUC: the chance a positive (clean) scores above a negative, ties half."""
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


@dataclass(frozen=True)
class FamilyReport:
    spearman: float  # mean over photos of rho(severity, -score), clean included as severity 0
    auc: float  # clean references vs this family's corrupted samples
    strongest_below_clean: bool  # the two strongest severities score below the clean original, every photo
    failures: tuple[str, ...]  # "photo@severity" where that did not hold


@dataclass(frozen=True)
class Report:
    families: dict[str, FamilyReport]
    auc: float  # every clean sample vs every corrupted one
    clean_scores: dict[str, float]  # clean photo -> its score
    cutout_scores: dict[str, float]  # photo -> its clean cut-out's score
    noise_scores: list[float]
    blank_scores: list[float]
    reasons: dict[str, list[str]] = field(default_factory=dict)  # family -> reasons at its top severity

    @property
    def passed(self) -> bool:
        """Issue 22's targets: AUC, every family below clean at its two strongest severities, pure
        noise and blank frames under the AGENTIC default threshold."""
        return (self.auc >= AUC_TARGET and all(f.strongest_below_clean for f in self.families.values())
                and max(self.noise_scores + self.blank_scores) < THRESHOLD)


def evaluate(evaluator: Evaluator, samples: Sequence[Sample]) -> Report:
    """Score every sample and compute the metrics."""
    results = [evaluator.evaluate(s.image, s.context) for s in samples]
    scores = [r.score for r in results]
    clean = {(s.photo, s.family): sc for s, sc in zip(samples, scores) if s.severity == 0}
    corrupted = [(s, sc) for s, sc in zip(samples, scores) if s.family in FAMILIES]
    families: dict[str, FamilyReport] = {}
    reasons: dict[str, list[str]] = {}
    for family, (_, reference) in FAMILIES.items():
        rows = [(s, sc) for s, sc in corrupted if s.family == family]
        if not rows:
            continue
        photos = list(dict.fromkeys(s.photo for s, _ in rows))
        top = sorted({s.severity for s, _ in rows})[-2:]
        rhos, failures = [], []
        for photo in photos:
            mine = [(s.severity, sc) for s, sc in rows if s.photo == photo]
            ref = clean[(photo, reference)]
            rhos.append(spearman([0] + [v for v, _ in mine], [-ref] + [-sc for _, sc in mine]))
            failures += [f"{photo}@{v}" for v, sc in mine if v in top and not sc < ref]
        refs = [sc for (photo, kind), sc in clean.items() if kind == reference]
        families[family] = FamilyReport(statistics.fmean(rhos), auc(refs, [sc for _, sc in rows]),
                                        not failures, tuple(failures))
        reasons[family] = sorted({r for s, res in zip(samples, results)
                                  if s.family == family and s.severity == top[-1] for r in res.reasons})
    clean_all = [sc for (_, kind), sc in clean.items() if kind in ("photo", "cutout")]
    return Report(
        families=families, auc=auc(clean_all, [sc for _, sc in corrupted]),
        clean_scores={p: sc for (p, kind), sc in clean.items() if kind == "photo"},
        cutout_scores={p: sc for (p, kind), sc in clean.items() if kind == "cutout"},
        noise_scores=[sc for s, sc in zip(samples, scores) if s.family == "pure_noise"],
        blank_scores=[sc for s, sc in zip(samples, scores) if s.family == "blank_frame"],
        reasons=reasons)
