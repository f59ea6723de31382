"""The Celery side of bench/bench_peer.py: the app and its one task, imported by the bench and by
the ``celery worker`` it starts (``-A peer_celery``, with bench/ on PYTHONPATH).

The task does the work our IMAGE_ADJUSTER handler does on the bench's 32x32 PNG (classical
provider): open it, apply brightness, contrast and warmth, write the result as PNG to the results
folder, answer its path. So both sides run the same work and the difference is the plumbing.

Settings the issue names: a solo worker (one task at a time, in the worker's process), late acks
(acknowledged after the task ran, as our workers commit after the result), prefetch 1, a Redis
broker and a Redis result backend (``delay(x).get()`` waits on it). ``PEER_REDIS_URL`` says where
Redis is; the app is built by :func:`make_app`, never at import of anything but the worker's
``-A`` module below.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from PIL import Image, ImageEnhance


def make_app(redis_url: str) -> Celery:
    app = Celery("peer", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="peer.image_adjust")(image_adjust)
    return app


def image_adjust(base_image_url: str, brightness: float, contrast: float, warmth: float,
                 results_dir: str) -> str:
    """Our IMAGE_ADJUSTER's work on a small image: factors 1 + value, warmth as a red/blue shift."""
    path = base_image_url.removeprefix("file://")
    with Image.open(path) as img:
        out = ImageEnhance.Brightness(img.convert("RGB")).enhance(1.0 + brightness)
    out = ImageEnhance.Contrast(out).enhance(1.0 + contrast)
    if warmth:
        r, g, b = out.split()
        shift = int(warmth * 30)
        out = Image.merge("RGB", (r.point(lambda v: min(255, v + shift)), g,
                                  b.point(lambda v: max(0, v - shift))))
    target = Path(results_dir) / f"{uuid.uuid4().hex}.png"
    out.save(target, format="PNG")
    return str(target)


def _worker_app() -> Any:
    url = os.environ.get("PEER_REDIS_URL")
    return make_app(url) if url else None


# What ``celery -A peer_celery worker`` loads (only the worker's process sets PEER_REDIS_URL).
app = _worker_app()
