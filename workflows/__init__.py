"""Workflows: DAGs of ordinary tasks, driven by the processors (docs/WORKFLOWS.md).

What is where:

* ``schemas/workflow_events.py``: the Avro models: ``WorkflowSpec`` (the API's body),
  ``WorkflowRequested`` / ``WorkflowCommandRequested`` (the ``<prefix>.workflows`` topic),
  ``WorkflowState`` (the compacted ``<prefix>.workflows.state`` topic), the statuses, and the
  workflow ids (``new_workflow_id``, version-8 UUIDs);
* ``workflows/spec.py``: ``validate_workflow(spec) -> ValidatedWorkflow``, raising
  ``WorkflowValidationError(step, field, reason)`` (the API's 422);
* ``workflows/record.py``: the pure state machine: ``create``, ``apply_command``,
  ``on_task_final`` return ``(WorkflowState, effects)`` (``SubmitStep``, ``CancelStep``);
  ``step_task_id``, ``step_params``, ``ready_steps``;
* ``producers/workflows.py``: ``WorkflowProducer``: ``create(spec, start=...)``, ``start``,
  ``pause``, ``resume``, ``cancel`` (records to the workflows topic; validate first);
* ``processors/workflows.py``: the engine (a Faust agent) that folds the workflows topic into the
  ``workflows`` table / state topic and submits and cancels the steps' tasks.

A step's task carries ``Orchestration(generation_id=<workflow id>, workflow_id, step_id,
suppress_events=<the spec's suppress_subtask_events>)``.
"""
