"""examples/: one task file per task type, each a valid task once given the sample image's URL,
as the API reads it (strict JSON) and as the producer does; the sample image is small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import TypeAdapter

from api.models.tasks import TaskSubmit
from producers.submit import validate_params
from schemas.enums import TaskType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The field each type reads its input image from, where it has one (examples/README.md).
_IMAGE_FIELD = {TaskType.BACKGROUND_REMOVE: "image_url"}
_NO_IMAGE = {TaskType.GENERATION, TaskType.LLM_INTERACTION}


def test_one_file_per_task_type() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(t.slug for t in TaskType)


@pytest.mark.parametrize("task_type", list(TaskType), ids=lambda t: t.slug)
def test_example_is_a_valid_task(task_type: TaskType, tmp_path: Path) -> None:
    body = json.loads((EXAMPLES / f"{task_type.slug}.json").read_text())
    assert body["task_type"] == task_type.value
    if task_type not in _NO_IMAGE:
        field = _IMAGE_FIELD.get(task_type, "base_image_url")
        assert field not in body  # the stack's inputs folder is only known once it runs
        body[field] = (tmp_path / "look.png").as_uri()
    TypeAdapter(TaskSubmit).validate_python(body)  # the API's model: what POST /tasks accepts
    params = validate_params(task_type, {k: v for k, v in body.items() if k != "task_type"})
    for dim in ("width", "height"):  # small enough for the offline models on a CPU
        assert (getattr(params, dim, None) or 0) <= 128


def test_sample_image_is_small() -> None:
    path = EXAMPLES / "look.png"
    assert path.stat().st_size < 50_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 96)
