"""Weight-free face detection and the region helpers of face edits (FACE_ENHANCER, REFINE).

A :class:`FaceDetector` returns boxes. OpenCV 5 wheels no longer ship Haar cascades
(``cv2.data`` is empty and ``CascadeClassifier`` left the main package), so
:func:`default_face_detector` uses a Haar cascade only where the running OpenCV has one (a 4.x
wheel, or a contrib build with the XML files) and otherwise a skin-tone detector (YCrCb
thresholds, blob shape, and non-skin holes where eyes and mouth are), which is approximate: it
may also pick up other compact skin areas with dark spots, and miss faces in unusual light.
Results record which detector ran. Handlers take a detector in their constructor, so tests and
deployments can inject another one.

Region edits go through :func:`feather_mask`, which is exactly 0 on a box's border, so nothing
outside a face box ever changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in pixels

# Detection runs on at most 1024 px (faces in larger frames are large too); boxes are scaled back.
DETECT_MAX_SIDE = 1024
# More boxes than this is a false-positive storm, not a group photo.
MAX_FACES = 16
# Chai & Ngan's skin cluster in YCrCb: Cr 133..173, Cb 77..127.
SKIN_LOW, SKIN_HIGH = (0, 133, 77), (255, 173, 127)
# A face blob covers at least 0.2% and at most half of the frame (a close portrait).
SKIN_MIN_FRAC, SKIN_MAX_FRAC = 0.002, 0.5
# A head (with some neck) is taller than wide, up to twice; compact: an ellipse fills 78% of its box.
SKIN_ASPECT_MIN, SKIN_ASPECT_MAX, SKIN_MIN_FILL = 0.8, 2.0, 0.5
# Eyes and mouth are non-skin holes in a face blob; one of at least 0.5% of the blob (and 4 px)
# tells a face from a plain skin-coloured patch (a wall, a beige garment).
FEATURE_HOLE_FRAC, FEATURE_HOLE_MIN_PX = 0.005, 4.0


@dataclass(frozen=True)
class FaceDetector:
    name: str  # recorded in the result's ``extra``
    detect: Callable[[np.ndarray], list[Box]]  # uint8 RGB -> boxes


def detect_skin_faces(rgb: np.ndarray) -> list[Box]:
    """Compact skin-coloured blobs of a face-like shape with eye/mouth holes (the fallback)."""
    height, width = rgb.shape[:2]
    skin = cv2.inRange(cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb), SKIN_LOW, SKIN_HIGH)
    size = max(3, (min(height, width) // 100) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(skin, cv2.MORPH_OPEN, kernel)
    # Closing joins a face split by shadows; the holes are then looked for in the opened mask.
    closed = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    boxes: list[tuple[int, Box]] = []
    for label, (x, y, w, h, area) in enumerate(stats[1:].tolist(), start=1):
        if not SKIN_MIN_FRAC * height * width <= area <= SKIN_MAX_FRAC * height * width:
            continue
        if not (SKIN_ASPECT_MIN <= h / w <= SKIN_ASPECT_MAX and area / (w * h) >= SKIN_MIN_FILL):
            continue
        blob = np.where(labels[y:y + h, x:x + w] == label, opened[y:y + h, x:x + w], 0)
        if _has_feature_holes(blob, area):
            boxes.append((area, (x, y, w, h)))
    return [box for _, box in sorted(boxes, reverse=True)[:MAX_FACES]]


def _has_feature_holes(blob: np.ndarray, area: int) -> bool:
    padded = cv2.copyMakeBorder(blob, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return False
    smallest = max(FEATURE_HOLE_MIN_PX, FEATURE_HOLE_FRAC * area)
    # In RETR_CCOMP's two-level hierarchy a contour with a parent is a hole.
    return any(parent >= 0 and cv2.contourArea(contour) >= smallest
               for contour, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True))


def _haar_cascade_path() -> str | None:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, "haarcascade_frontalface_default.xml") if folder else None
    return path if path and os.path.isfile(path) else None


@functools.cache
def default_face_detector() -> FaceDetector:
    """A Haar cascade where this OpenCV has one, else the skin-tone detector (see module doc).
    Resolved on first use, not at import, and kept for the life of the worker."""
    path = _haar_cascade_path()
    if path is not None and hasattr(cv2, "CascadeClassifier"):
        cascade: Any = cv2.CascadeClassifier(path)
        if not cascade.empty():

            def detect_haar(rgb: np.ndarray) -> list[Box]:
                gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
                found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
                return [tuple(int(v) for v in box) for box in list(found)[:MAX_FACES]]

            return FaceDetector("opencv-haar-frontalface", detect_haar)
    return FaceDetector("skin-ycrcb", detect_skin_faces)


def detect_faces(rgb: np.ndarray, detector: FaceDetector) -> list[Box]:
    """Run ``detector`` on a copy no larger than DETECT_MAX_SIDE and map boxes back, clipped."""
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    boxes = []
    for x, y, w, h in detector.detect(small)[:MAX_FACES]:
        x0, y0 = max(0, int(x / scale)), max(0, int(y / scale))
        x1, y1 = min(width, int(np.ceil((x + w) / scale))), min(height, int(np.ceil((y + h) / scale)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            boxes.append((x0, y0, x1 - x0, y1 - y0))
    return boxes


def expand_box(box: Box, frac: float, width: int, height: int) -> Box:
    """Grow a box by ``frac`` of its size on every side (hair, chin), clipped to the image."""
    x, y, w, h = box
    dx, dy = round(w * frac), round(h * frac)
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
    return (x0, y0, x1 - x0, y1 - y0)


def feather_mask(width: int, height: int) -> np.ndarray:
    """A soft ellipse filling a ``width`` x ``height`` box, exactly 0 on the box border, so a
    region edit blends in without a visible rectangle and never touches pixels outside."""
    mask = np.zeros((height, width), np.float32)
    centre = (width // 2, height // 2)
    axes = (max(1, round(width * 0.4)), max(1, round(height * 0.4)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(0.5, 0.05 * min(width, height)))
    mask[0, :] = mask[-1, :] = 0.0
    mask[:, 0] = mask[:, -1] = 0.0
    return mask
