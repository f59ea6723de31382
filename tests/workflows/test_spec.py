"""validate_workflow: every rule names the step and the field it found broken."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.enums import TaskType
from workflows.spec import RESULT_FIELDS, WorkflowSpec, WorkflowValidationError, validate_workflow

MAP_IMAGE = {"from_step": "gen", "from_field": "result_image_url", "to_field": "base_image_url"}


def spec(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "w", "origin_instance": "tests", "steps": list(steps)}


def gen(step_id: str = "gen", **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "task_type": "GENERATION", "config": {"prompt": "a red dress"}, **extra}


def after(step_id: str, task_type: str, parent: str = "gen", **extra: Any) -> dict[str, Any]:
    mapping = {**MAP_IMAGE, "from_step": parent}
    if task_type == "BACKGROUND_REMOVE":
        mapping["to_field"] = "image_url"
    return {"id": step_id, "task_type": task_type, "depends_on": [parent], "input_mappings": [mapping], **extra}


def invalid(data: dict[str, Any]) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as caught:
        validate_workflow(data)
    return caught.value


def test_the_fashion_pipeline_is_valid_and_ordered():
    valid = validate_workflow(spec(
        gen(), after("refine", "REFINE"), after("cutout", "BACKGROUND_REMOVE", "refine"),
        after("adjust", "IMAGE_ADJUSTER", "cutout", config={"brightness": 0.1})))
    assert valid.order == ("gen", "refine", "cutout", "adjust")
    assert valid.ancestors["adjust"] == {"gen", "refine", "cutout"}
    assert valid.step("refine").task_type is TaskType.REFINE
    assert isinstance(valid.spec, WorkflowSpec)


def test_a_diamond_is_valid_and_its_join_waits_for_both_branches():
    valid = validate_workflow(spec(
        gen(), after("left", "REFINE"), after("right", "FACE_ENHANCER"),
        {"id": "join", "task_type": "EDITING", "depends_on": ["left", "right"],
         "config": {"prompt": "compose"},
         "input_mappings": [{**MAP_IMAGE, "from_step": "left"},
                            {"from_step": "right", "from_field": "result_image_url", "to_field": "mask_url"}]}))
    assert valid.order == ("gen", "left", "right", "join")
    assert valid.ancestors["join"] == {"gen", "left", "right"}


def test_a_mapping_may_read_any_ancestor_not_only_a_parent():
    valid = validate_workflow(spec(gen(), after("refine", "REFINE"),
                                   after("face", "FACE_ENHANCER", "refine",
                                         input_mappings=[MAP_IMAGE])))  # reads gen, two levels up
    assert valid.order[-1] == "face"


@pytest.mark.parametrize(("data", "step", "field", "words"), [
    (spec(), None, "steps", "at least one step"),
    (spec(gen(), gen()), "gen", "id", "two steps"),
    (spec(gen(), {"id": "x", "task_type": "PAINTING"}), "x", "task_type", "GENERATION"),
    (spec(gen(depends_on=["nope"])), "gen", "depends_on", "no step 'nope'"),
    (spec(gen(depends_on=["gen"])), "gen", "depends_on", "itself"),
    (spec(gen("a", depends_on=["b"]), gen("b", depends_on=["a"])), "a", "depends_on", "cycle"),
    (spec(gen(), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "from_step": "ghost"}])),
     "r", "input_mappings[0].from_step", "no step 'ghost'"),
    (spec(gen(), gen("other"), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "from_step": "other"}])),
     "r", "input_mappings[0].from_step", "dependencies"),
    (spec(gen(), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "from_field": "result_video_url"}])),
     "r", "input_mappings[0].from_field", "has no field 'result_video_url'"),
    (spec(gen(), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "to_field": "image_url"}])),
     "r", "input_mappings[0].to_field", "no parameter 'image_url'"),
    (spec(gen(), after("r", "REFINE", config={"base_image_url": "s3://b/x.png"})),
     "r", "input_mappings[0].to_field", "filled twice"),
    (spec(gen(), after("r", "REFINE", input_mappings=[MAP_IMAGE, MAP_IMAGE])),
     "r", "input_mappings[1].to_field", "filled twice"),
    # the parameters once mapped: a required parameter nobody fills, a bad value, a bad kind
    (spec(gen(), {"id": "r", "task_type": "REFINE", "depends_on": ["gen"]}), "r", "config.base_image_url", "required"),
    (spec(gen(), after("r", "REFINE", config={"upscale_factor": 9})), "r", "config.upscale_factor", "4"),
    (spec(gen(config={})), "gen", "config.prompt", "required"),
    (spec(gen(), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "from_field": "output_urls"}])),
     "r", "config.base_image_url", "string"),
    (spec(gen(), after("r", "REFINE", input_mappings=[{**MAP_IMAGE, "from_field": "seed"}])),
     "r", "config.base_image_url", "string"),
    (spec({"id": "llm", "task_type": "LLM_INTERACTION", "config": {"prompt": "describe"}},
          after("r", "REFINE", "llm", input_mappings=[{"from_step": "llm", "from_field": "result_text",
                                                       "to_field": "base_image_url"}])),
     "r", "config.base_image_url", "URL"),
    (spec(gen(unknown=1)), "gen", "unknown", "xtra"),
])
def test_each_rule_names_the_step_and_field(data, step, field, words):
    error = invalid(data)
    assert (error.step, error.field) == (step, field), error
    assert words in error.reason, error.reason
    assert error.problem() == {"step": step, "field": field, "reason": error.reason}
    assert field in str(error)


def test_a_mapped_text_may_fill_a_prompt():
    validate_workflow(spec(
        {"id": "llm", "task_type": "LLM_INTERACTION", "config": {"prompt": "write a prompt"}},
        {"id": "gen", "task_type": "GENERATION", "depends_on": ["llm"],
         "input_mappings": [{"from_step": "llm", "from_field": "result_text", "to_field": "prompt"}]}))


def test_result_fields_are_task_result_fields():
    from schemas.events import TaskResult

    for fields in RESULT_FIELDS.values():
        assert set(fields) <= set(TaskResult.model_fields)
    assert set(RESULT_FIELDS) == set(TaskType)
