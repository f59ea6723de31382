from __future__ import annotations

import os
import tempfile

import cv2
import numpy as np
import pytest

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.video_generation import DiffusersVideoGeneration, frame_plan, video_size
from schemas.task_params import VideoGenerationParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    differs,
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness

URL = "file:///inputs/still.png"


def make_video(cache, harness: Harness | None = None, **kw):
    harness = harness or Harness()
    harness.add(URL, noise_image(40, 48, seed=1))
    params = VideoGenerationParams(base_image_url=URL, **kw)
    return DiffusersVideoGeneration().run(params, model_ctx(harness, cache))


def read_frames(data: bytes) -> tuple[list[np.ndarray], float]:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "v.mp4")
        with open(path, "wb") as handle:
            handle.write(data)
        capture = cv2.VideoCapture(path)
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
    return frames, fps


def test_frame_plan_and_size():
    assert frame_plan(24, 3.0, 25) == (25, 72)  # capped
    assert frame_plan(4, 1.0, 8) == (4, 4)
    assert frame_plan(7, None, 8) == (8, 8)  # no duration: the full clip
    assert frame_plan(1, 0.1, 8) == (2, 2)  # at least two frames
    assert video_size(48, 40) == (48, 40)
    assert video_size(2048, 1152) == (1024, 576)


def test_mp4_with_frame_count_fps_and_duration(model_cache):
    harness = Harness()
    result = make_video(model_cache, harness, fps=4, duration=1.0, motion_bucket_id=127, seed=1)
    out = result.outputs[0]
    assert out.content_type == "video/mp4" and out.suffix == ".mp4"
    assert out.data[4:8] == b"ftyp"  # an ISO media (MP4) file
    assert (result.fps, result.frame_count, result.duration_s) == (4, 4, 1.0)
    assert (result.width, result.height) == (48, 40)
    frames, fps = read_frames(out.data)
    assert len(frames) == 4 and fps == 4.0
    assert all(frame.shape == (40, 48, 3) for frame in frames)
    assert result.extra["codec"] in ("avc1", "mp4v")
    harness.assert_progress_complete()


def test_frames_are_capped_in_the_offline_profile(model_cache):
    result = make_video(model_cache, fps=24, duration=3.0, seed=1)
    assert result.frame_count == 8 and result.extra["frames_requested"] == 72
    assert result.duration_s == pytest.approx(8 / 24)
    assert len(read_frames(result.outputs[0].data)[0]) == 8


def test_seed_and_motion_change_the_video(model_cache):
    def frames(**kw):
        return np.stack(read_frames(make_video(model_cache, fps=3, duration=1.0, **kw).outputs[0].data)[0])

    a, b = frames(seed=1), frames(seed=1)
    assert np.array_equal(a, b)
    assert differs(a, frames(seed=2), 10)
    assert differs(a, frames(seed=1, motion_bucket_id=20), 3)


def test_provider_config_is_checked(model_cache):
    with pytest.raises(InvalidInput, match="noise_aug_strength"):
        make_video(model_cache, provider_config={"noise_aug_strength": 3})


def test_cancel_at_the_first_step(model_cache):
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        make_video(model_cache, harness, fps=2, duration=1.0, seed=1)
    assert harness.progress == [0.25]
