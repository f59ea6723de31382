"""Tiny Stable Video Diffusion: image -> N frames on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.models import Role


@pytest.fixture(scope="module")
def svd(registry):
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(registry.path_for(Role.IMAGE_TO_VIDEO),
                                                        **registry.load_kwargs(Role.IMAGE_TO_VIDEO))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frames(pipe, image, seed=0, num_frames=4, size=32, **kwargs):
    return pipe(image, height=size, width=size, num_frames=num_frames, num_inference_steps=2,
                decode_chunk_size=num_frames, generator=torch.Generator().manual_seed(seed),
                **kwargs).frames[0]


def test_image_to_video_frames(svd):
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    video = frames(svd, image, num_frames=4, fps=7, motion_bucket_id=127)
    assert len(video) == 4
    assert all(f.size == (32, 32) and f.mode == "RGB" for f in video)

    again = frames(svd, image, num_frames=4, fps=7, motion_bucket_id=127)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(video, again))
    other_seed = frames(svd, image, seed=1, num_frames=4, fps=7, motion_bucket_id=127)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(video, other_seed))
    motion = frames(svd, image, num_frames=4, fps=7, motion_bucket_id=20)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(video, motion))

    longer = svd(image, height=48, width=64, num_frames=6, num_inference_steps=2,
                 decode_chunk_size=3, generator=torch.Generator().manual_seed(0)).frames[0]
    assert len(longer) == 6 and all(f.size == (64, 48) for f in longer)
