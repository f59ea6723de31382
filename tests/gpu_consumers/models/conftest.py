"""Shared fixtures: one offline registry (and one loaded pipeline per role) per test session.

Building and loading the tiny models takes well under a second each, but doing it once per
session keeps the whole folder fast on a 2-core CPU.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads the variable at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from gpu_consumers.models import ModelProfile, ModelRegistry, Role  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hub_offline():
    # If another test module imported huggingface_hub first, the variable above came too late.
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    yield
    hub_constants.HF_HUB_OFFLINE = saved


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> ModelRegistry:
    return ModelRegistry(ModelProfile.OFFLINE, tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The tiny models gain nothing from intra-op parallelism, and on a shared 2-core machine a
    # second OpenMP thread competing with other processes turns 0.2 s calls into 3-5 s ones.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd_pipe(registry):
    """The text-to-image base pipeline, loaded the way a handler loads it."""
    from diffusers import AutoPipelineForText2Image

    return _quiet(AutoPipelineForText2Image.from_pretrained(
        registry.path_for(Role.TEXT_TO_IMAGE), **registry.load_kwargs(Role.TEXT_TO_IMAGE)))


@pytest.fixture()
def fresh_sd_pipe(registry):
    """A separate instance, for tests that attach adapters (they mutate the UNet)."""
    from diffusers import AutoPipelineForText2Image

    return _quiet(AutoPipelineForText2Image.from_pretrained(
        registry.path_for(Role.TEXT_TO_IMAGE), **registry.load_kwargs(Role.TEXT_TO_IMAGE)))
