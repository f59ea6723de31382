"""The model judges end to end: a ``computectl worker`` process serving LLM_INTERACTION on the real
broker looks at images (the offline VLM and CLIP), and refuses to start with a blind judge.

The worker processes, the input folder and the shared offline model folder are those of
:mod:`tests.gpu_consumers.test_worker_e2e` (its fixtures, imported here).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from schemas.enums import ErrorCode, TaskStatus, TaskType
from tests.gpu_consumers.test_worker_e2e import (  # noqa: F401 - fixtures
    DEADLINE_S,
    inputs,
    kafka,
    model_cache_dir,
    read_output,
    statuses,
    submit,
    task_files,
    workers,
)

pytestmark = pytest.mark.integration

VLM_ID = "Qwen/Qwen2.5-VL-3B-Instruct"  # the production id; the offline worker answers to it too


def _built(model_cache_dir: Path, role: str) -> Path:
    [folder] = [p for p in model_cache_dir.glob(f"{role}-*") if p.is_dir()]
    return folder


def test_a_judge_task_looks_at_its_image_and_a_clip_task_scores_it(
        kafka, statuses, workers, inputs, model_cache_dir, results_dir, tmp_path):
    image = inputs.image("result.png", (48, 64), seed=5)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(Path(image.removeprefix("file://")).read_bytes())
    judge, alignment, refused = submit(
        kafka,
        (TaskType.LLM_INTERACTION, {
            "prompt": "Judge the attached image.", "system_prompt": "Answer with JSON only.",
            "max_tokens": 8, "temperature": 0.0,
            "provider_config": {"model": VLM_ID, "image_urls": [image]}}),
        (TaskType.LLM_INTERACTION, {
            "prompt": "a red dress on a light grey backdrop", "provider_type": "clip",
            "provider_config": {"image_urls": [image]}}),
        (TaskType.LLM_INTERACTION, {  # not under INPUT_ALLOWED_FILE_ROOTS
            "prompt": "Judge it.", "provider_config": {"image_urls": [outside.as_uri()]}}),
    )
    worker = workers("llm_interaction", "--burst", "--max-tasks", "3", "--idle-timeout", "60")
    statuses.wait_terminal(judge, alignment, refused, also=worker.check_not_failed)
    summary = worker.finish()

    assert (summary["completed"], summary["failed"]) == (2, 1)
    seen = statuses.state(judge)
    assert seen.status is TaskStatus.COMPLETED, (seen.error_code, seen.error_message)
    assert statuses.terminals_per_attempt(judge) == Counter({1: 1})
    result = seen.result
    # The answer came from the vision-language model, not the text LLM.
    assert result.metadata.model == f"offline:{_built(model_cache_dir, 'vlm').name}"
    assert result.metadata.provider == "transformers" and isinstance(result.result_text, str)
    assert read_output(result.output_urls[0], None).decode() == result.result_text

    scored = statuses.state(alignment)
    assert scored.status is TaskStatus.COMPLETED, (scored.error_code, scored.error_message)
    verdict = json.loads(scored.result.result_text)
    clip_id = f"offline:{_built(model_cache_dir, 'clip').name}"
    assert verdict["model"] == scored.result.metadata.model == clip_id
    assert -1.0 <= verdict["similarity"] <= 1.0 and 0.0 <= verdict["score"] <= 1.0
    assert scored.result.metadata.content_type == "application/json"

    blind = statuses.state(refused)
    assert (blind.status, blind.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT)
    assert task_files(results_dir, refused) == []


def test_a_worker_with_a_text_only_judge_refuses_to_start(workers, model_cache_dir):
    llm = _built(model_cache_dir, "llm")
    blind = workers("llm_interaction", env={
        "COMPUTE_MODEL_PROFILE": "production",
        "COMPUTE_MODEL_VLM": str(llm),
        "COMPUTE_MODEL_CLIP": str(_built(model_cache_dir, "clip")),
    })
    try:
        code = blind.proc.wait(DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker started with a text-only judge:\n{blind.logs()}") from None
    assert code == 1
    last_line = blind.err.read_text().strip().splitlines()[-1]
    assert last_line == (f"Error: the judge model {llm} is text-only (Qwen2ForCausalLM): configure "
                         f"an image-text-to-text model for COMPUTE_MODEL_VLM")
    assert blind.out.read_text() == ""  # it never ran: no counters
