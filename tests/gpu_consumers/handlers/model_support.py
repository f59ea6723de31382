"""Shared pieces of the model-provider tests: one offline ModelCache for the whole session.

The fixtures are imported by each ``test_<type>_model.py``. pytest makes a separate fixture
definition per importing module, so the cache itself is kept in a module global: the tiny models
are built into one temporary folder and loaded once per session, whichever module asks first.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads the variable at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gpu_consumers.handlers.base import TaskContext  # noqa: E402
from gpu_consumers.model_cache import ModelCache  # noqa: E402
from gpu_consumers.models import ModelProfile, ModelRegistry  # noqa: E402
from tests.gpu_consumers.handlers.support import Harness  # noqa: E402

_CACHE: ModelCache | None = None


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> ModelCache:
    import huggingface_hub.constants as hub_constants

    # If another module imported huggingface_hub before the variable above was set.
    hub_constants.HF_HUB_OFFLINE = True
    global _CACHE
    if _CACHE is None:
        registry = ModelRegistry(ModelProfile.OFFLINE, tmp_path_factory.mktemp("model-cache"))
        _CACHE = ModelCache(registry, device="cpu")
    return _CACHE


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tiny models gain nothing from intra-op threads, and the CPU is shared: one thread.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def model_ctx(harness: Harness, cache: ModelCache, **changes) -> TaskContext:
    """The harness's context (fake fetcher, progress recorder, cancel token) with the cache."""
    return dataclasses.replace(harness.ctx(), models=cache, **changes)


def noise_image(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def differs(a: np.ndarray, b: np.ndarray, at_least: float = 1.0) -> bool:
    """Some pixel differs by at least ``at_least`` levels (arrays of the same shape)."""
    return bool(np.abs(a.astype(np.int16) - b.astype(np.int16)).max() >= at_least)
