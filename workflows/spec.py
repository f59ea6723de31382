"""A workflow's spec and its validation: is it a DAG whose every step can run?

The models are the reference API's (``schemas/workflow_events.py``, re-exported here):
``WorkflowSpec {name, origin_instance, description?, suppress_subtask_events, config, steps:
[WorkflowStep {id, task_type, config, depends_on, input_mappings: [InputMapping {from_step,
from_field, to_field}]}]}``. :func:`validate_workflow` checks, in this order, and raises
:class:`WorkflowValidationError` naming the step and the field at the first problem:

1. at least one step; unique ids; known task types;
2. ``depends_on`` names other, real steps; no cycle;
3. each mapping's ``from_step`` is an ancestor of the step (through ``depends_on``, so its
   result exists when the step starts), ``from_field`` is a result field of that step's task
   type (:data:`RESULT_FIELDS`, fields of ``TaskResult.avsc``), ``to_field`` a parameter of this
   step's task type, filled by one mapping and not also set in ``config``;
4. the step's parameters are valid once the mappings are applied: ``config`` plus a placeholder
   of the right kind for each mapped field, through ``schemas/task_params.py``'s model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue, ValidationError

from schemas.enums import TaskType
from schemas.errors import ComputeError
from schemas.task_params import PARAMS_MODELS
from schemas.workflow_events import InputMapping, WorkflowSpec, WorkflowStep

__all__ = [
    "RESULT_FIELDS",
    "InputMapping",
    "ValidatedWorkflow",
    "WorkflowSpec",
    "WorkflowStep",
    "WorkflowValidationError",
    "validate_workflow",
]

_IMAGE = ("result_image_url", "output_urls", "seed")
# The TaskResult fields each task type fills (gpu_consumers/handlers): what a mapping may read.
RESULT_FIELDS: dict[TaskType, tuple[str, ...]] = {
    **{t: _IMAGE for t in TaskType},
    TaskType.VIDEO_GENERATION: ("result_video_url", "output_urls", "seed"),
    TaskType.LLM_INTERACTION: ("result_text",),
}

# What stands in for a mapped field while the parameters are checked before any step ran: a
# value of the kind the result field holds, so a URL field fed a text (or a list) is refused.
_PLACEHOLDERS: dict[str, JsonValue] = {
    "result_image_url": "https://placeholder.invalid/image.png",
    "result_video_url": "https://placeholder.invalid/video.mp4",
    "result_text": "placeholder text",
    "output_urls": ["https://placeholder.invalid/image.png"],
    "seed": 1,
}


class WorkflowValidationError(ComputeError):
    """A workflow spec that cannot run: ``step`` (None: the workflow itself) and ``field`` say
    where, ``reason`` what is wrong. The API answers 422; fix the spec."""

    def __init__(self, step: str | None, field: str, reason: str) -> None:
        self.step, self.field, self.reason = step, field, reason
        where = f"step {step!r}, field {field}" if step is not None else f"field {field}"
        super().__init__(f"invalid workflow: {where}: {reason}")

    def problem(self) -> dict[str, str | None]:
        """The error as JSON (the API's 422 body)."""
        return {"step": self.step, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class ValidatedWorkflow:
    spec: WorkflowSpec
    order: tuple[str, ...]  # the step ids, parents before children (ties: the spec's order)
    ancestors: Mapping[str, frozenset[str]]  # step id -> every step it depends on, transitively

    def step(self, step_id: str) -> WorkflowStep:
        return next(s for s in self.spec.steps if s.id == step_id)


def _parse(data: WorkflowSpec | Mapping[str, Any]) -> WorkflowSpec:
    if isinstance(data, WorkflowSpec):
        return data
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        step = None
        if len(loc) >= 2 and loc[0] == "steps" and loc[1].isdigit():
            raw = data.get("steps") or []
            index = int(loc[1])
            found = raw[index] if index < len(raw) and isinstance(raw[index], Mapping) else {}
            step, loc = str(found.get("id", f"#{index}")), loc[2:]
        raise WorkflowValidationError(step, ".".join(loc) or "(spec)", first["msg"]) from None


def _order(spec: WorkflowSpec) -> tuple[tuple[str, ...], dict[str, frozenset[str]]]:
    """Topological order (Kahn, the spec's order among ready steps) and each step's ancestors."""
    deps = {s.id: list(dict.fromkeys(s.depends_on)) for s in spec.steps}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = [sid for sid in deps if sid not in done and all(d in done for d in deps[sid])]
        if not ready:
            stuck = [sid for sid in deps if sid not in done]
            raise WorkflowValidationError(stuck[0], "depends_on",
                                          f"the steps {', '.join(stuck)} depend on each other in a cycle")
        order += ready
        done.update(ready)
    ancestors: dict[str, frozenset[str]] = {}
    for sid in order:
        ancestors[sid] = frozenset(deps[sid]).union(*(ancestors[d] for d in deps[sid]))
    return tuple(order), ancestors


def _check_step(step: WorkflowStep, steps: Mapping[str, WorkflowStep],
                ancestors: frozenset[str]) -> None:
    params_model = PARAMS_MODELS[step.task_type]
    config = dict(step.config or {})
    filled: dict[str, JsonValue] = {}
    for i, mapping in enumerate(step.input_mappings):
        where = f"input_mappings[{i}]"
        source = steps.get(mapping.from_step)
        if source is None:
            raise WorkflowValidationError(step.id, f"{where}.from_step",
                                          f"no step {mapping.from_step!r} in the workflow")
        if mapping.from_step not in ancestors:
            raise WorkflowValidationError(step.id, f"{where}.from_step",
                                          f"step {mapping.from_step!r} is not among this step's "
                                          "dependencies (depends_on, directly or not)")
        fields = RESULT_FIELDS[source.task_type]
        if mapping.from_field not in fields:
            raise WorkflowValidationError(step.id, f"{where}.from_field",
                                          f"a {source.task_type.value} result has no field "
                                          f"{mapping.from_field!r} (it has {', '.join(fields)})")
        if mapping.to_field not in params_model.model_fields:
            raise WorkflowValidationError(step.id, f"{where}.to_field",
                                          f"{step.task_type.value} has no parameter {mapping.to_field!r}")
        if mapping.to_field in filled or mapping.to_field in config:
            raise WorkflowValidationError(step.id, f"{where}.to_field",
                                          f"{mapping.to_field!r} is filled twice (by config or "
                                          "another mapping): which one wins would be a guess")
        filled[mapping.to_field] = _PLACEHOLDERS[mapping.from_field]
    try:
        params_model.model_validate({**config, **filled})
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise WorkflowValidationError(step.id, f"config.{path}" if path else "config",
                                      first["msg"]) from None


def validate_workflow(data: WorkflowSpec | Mapping[str, Any]) -> ValidatedWorkflow:
    """``data`` (a spec, or its JSON object) checked as the module doc says; raises
    :class:`WorkflowValidationError` at the first problem."""
    spec = _parse(data)
    if not spec.steps:
        raise WorkflowValidationError(None, "steps", "a workflow needs at least one step")
    steps: dict[str, WorkflowStep] = {}
    for step in spec.steps:
        if step.id in steps:
            raise WorkflowValidationError(step.id, "id", "two steps have this id")
        steps[step.id] = step
    for step in spec.steps:
        for dep in step.depends_on:
            if dep == step.id:
                raise WorkflowValidationError(step.id, "depends_on", "a step cannot depend on itself")
            if dep not in steps:
                raise WorkflowValidationError(step.id, "depends_on", f"no step {dep!r} in the workflow")
    order, ancestors = _order(spec)
    for step in spec.steps:
        _check_step(step, steps, ancestors[step.id])
    return ValidatedWorkflow(spec=spec, order=order, ancestors=ancestors)
