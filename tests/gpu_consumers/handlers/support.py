"""A handler's own collaborators for unit tests: a fetcher serving PIL images from a dict, a
progress recorder and a cancel token that can fire after the n-th progress report."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gpu_consumers.handlers.base import CancelToken, HandlerResult, TaskContext


class FakeFetcher:
    def __init__(self, images: dict[str, Image.Image]) -> None:
        self.images = images
        self.fetched: list[str] = []

    def fetch_image(self, url: str, *, mode: str | None = "RGB") -> Image.Image:
        # The same signature and default as gpu_consumers.inputs.InputFetcher.fetch_image.
        self.fetched.append(url)
        image = self.images[url]
        return image.convert(mode) if mode else image.copy()


@dataclass
class Harness:
    images: dict[str, Image.Image] = field(default_factory=dict)
    progress: list[float] = field(default_factory=list)
    cancel: CancelToken = field(default_factory=CancelToken)
    cancel_after: int | None = None  # cancel when this many progress reports have arrived

    def add(self, url: str, image: Image.Image | np.ndarray) -> str:
        self.images[url] = image if isinstance(image, Image.Image) else Image.fromarray(image)
        return url

    def _report(self, fraction: float) -> None:
        self.progress.append(fraction)
        if self.cancel_after is not None and len(self.progress) >= self.cancel_after:
            self.cancel.cancel()

    def ctx(self) -> TaskContext:
        return TaskContext(task_id="t-1", attempt=1, progress=self._report, cancel=self.cancel,
                           fetch=FakeFetcher(self.images), models=None)

    def assert_progress_complete(self) -> None:
        assert self.progress, "no progress was reported"
        assert all(0.0 <= p <= 1.0 for p in self.progress)
        assert self.progress == sorted(self.progress), f"not monotonic: {self.progress}"
        assert self.progress[-1] == 1.0


def decode(result: HandlerResult, index: int = 0) -> np.ndarray:
    """The pixels of one output, as stored (RGB or RGBA uint8)."""
    with Image.open(io.BytesIO(result.outputs[index].data)) as image:
        image.load()
        return np.asarray(image)


def output_image(result: HandlerResult, index: int = 0) -> Image.Image:
    image = Image.open(io.BytesIO(result.outputs[index].data))
    image.load()
    return image


def subject_on_plain(size: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """A fashion-shot stand-in: a red-and-navy textured subject in the middle of a light grey
    studio background (height x width = ``size``)."""
    height, width = size
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 235, np.uint8)
    image += rng.integers(0, 6, image.shape, dtype=np.uint8)  # sensor noise on the backdrop
    y0, y1, x0, x1 = height // 4, 3 * height // 4, 3 * width // 8, 5 * width // 8
    body = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    body[...] = (180, 30, 40)
    body[(y1 - y0) // 2:] = (30, 40, 110)  # a second garment colour
    image[y0:y1, x0:x1] = body
    return image


def face_on_backdrop(size: tuple[int, int] = (120, 160), centre: tuple[int, int] = (80, 60),
                     seed: int = 0) -> np.ndarray:
    """A stand-in portrait: a skin-toned oval with dark eyes and mouth on a blue backdrop, with
    noise so that smoothing has something to do (height x width = ``size``)."""
    import cv2

    height, width = size
    cx, cy = centre
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = (40, 90, 160)
    cv2.ellipse(image, (cx, cy), (22, 30), 0, 0, 360, (224, 172, 140), -1)
    for dx in (-9, 9):
        cv2.ellipse(image, (cx + dx, cy - 8), (5, 3), 0, 0, 360, (40, 30, 30), -1)
    cv2.ellipse(image, (cx, cy + 14), (9, 3), 0, 0, 360, (120, 40, 50), -1)
    noise = np.random.default_rng(seed).integers(-12, 13, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
