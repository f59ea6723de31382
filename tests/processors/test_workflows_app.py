"""The workflow engine on the real broker: ``python -m processors.cli`` (``App`` from
test_lifecycle_app) and a real worker runtime (``gpu_consumers.runtime.Worker`` in a thread)
serving six task types with tiny recording handlers (a 1 px PNG each). Workflows are sent with
``WorkflowProducer``; the outcome is read from the workflows-state topic, the task topics and
the handlers' own record of what they were given. Every wait is a condition with a deadline.

Phases, one app: the fashion pipeline, a diamond (one branch failing once with a retryable error,
which its task's retry policy handles) and a failing chain at once; then pause/resume
(a step held while the pause lands), cancel (a step held, then cancelled through the control
topic), and a processors restart while a step runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from confluent_kafka import Producer

from gpu_consumers.errors import InvalidInput, ProviderError
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.runtime import Worker
from gpu_consumers.storage import FileStore
from processors.folding import STATE_CONTENT_TYPE, decode_state, encode_state
from processors.workflows import BadWorkflowRecord, read_workflow_message
from producers.workflows import WorkflowProducer
from schemas.enums import TaskStatus, TaskType
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from schemas.workflow_events import WorkflowSpec, WorkflowState, WorkflowStatus, WorkflowStepStatus, new_workflow_id
from state.lifecycle import fold_all
from tests.gpu_consumers.runtime_helpers import PNG, Running, worker_settings
from tests.processors.scripted import T0, status
from tests.processors.test_lifecycle_app import CODEC, App, read_all, wait_for
from workflows.record import step_task_id

W, P = WorkflowStatus, WorkflowStepStatus
TYPES = [TaskType.GENERATION, TaskType.REFINE, TaskType.BACKGROUND_REMOVE, TaskType.IMAGE_ADJUSTER,
         TaskType.FACE_ENHANCER, TaskType.EDITING]
HOLD_S = 90.0  # the longest a held step waits for its release (a test bound, not a sleep)


def image_from(parent: str, to_field: str = "base_image_url") -> dict[str, str]:
    return {"from_step": parent, "from_field": "result_image_url", "to_field": to_field}


FASHION = [
    {"id": "generate", "task_type": "GENERATION", "config": {"prompt": "a linen dress", "width": 64, "height": 64}},
    {"id": "refine", "task_type": "REFINE", "depends_on": ["generate"], "input_mappings": [image_from("generate")]},
    {"id": "cutout", "task_type": "BACKGROUND_REMOVE", "depends_on": ["refine"],
     "input_mappings": [image_from("refine", "image_url")]},
    {"id": "adjust", "task_type": "IMAGE_ADJUSTER", "depends_on": ["cutout"], "config": {"brightness": 0.1},
     "input_mappings": [image_from("cutout")]},
]
DIAMOND = [
    {"id": "top", "task_type": "GENERATION", "config": {"prompt": "a hat", "width": 64, "height": 64}},
    {"id": "left", "task_type": "REFINE", "depends_on": ["top"], "input_mappings": [image_from("top")]},
    {"id": "right", "task_type": "FACE_ENHANCER", "depends_on": ["top"], "input_mappings": [image_from("top")]},
    {"id": "join", "task_type": "EDITING", "depends_on": ["left", "right"], "config": {"prompt": "merge"},
     "input_mappings": [image_from("left"), image_from("right", "mask_url")]},
]
FAILING = [
    {"id": "first", "task_type": "GENERATION", "config": {"prompt": "fine", "width": 64, "height": 64}},
    {"id": "breaks", "task_type": "REFINE", "depends_on": ["first"], "input_mappings": [image_from("first")]},
    {"id": "never", "task_type": "IMAGE_ADJUSTER", "depends_on": ["breaks"], "input_mappings": [image_from("breaks")]},
]
TWO = FASHION[:2]  # generate -> refine: the pause, cancel and restart scenarios


class Script:
    """What the handlers do, by task id: ``fail`` (INVALID_INPUT: final at once), ``hold``
    (until released, checking its cancel token), else complete. Records every run."""

    def __init__(self) -> None:
        self.fail: set[str] = set()
        self.flaky: set[str] = set()  # PROVIDER_ERROR on attempt 1: retried by the task's policy
        self.holds: dict[str, threading.Event] = {}
        self.runs: list[tuple[str, dict[str, Any]]] = []
        self.started: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def hold(self, task_id: str) -> threading.Event:
        self.started[task_id] = threading.Event()
        return self.holds.setdefault(task_id, threading.Event())

    def ran(self, task_id: str) -> list[dict[str, Any]]:
        return [params for tid, params in self.runs if tid == task_id]


def handler_class(task_type: TaskType, script: Script) -> type:
    class Recording:
        providers: ClassVar[tuple[str, ...]] = ("test",)

        def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
            with script._lock:
                script.runs.append((ctx.task_id, params.model_dump(mode="json", exclude_none=True)))
            if ctx.task_id in script.fail:
                raise InvalidInput("scripted failure")
            if ctx.task_id in script.flaky and ctx.attempt == 1:
                raise ProviderError("scripted provider hiccup")
            if ctx.task_id in script.holds:
                script.started[ctx.task_id].set()
                release = script.holds[ctx.task_id]
                for _ in range(int(HOLD_S / 0.05)):
                    ctx.cancel.raise_if_cancelled()
                    if release.wait(0.05):  # the handler's cancel check, as a real step loop does
                        break
            return HandlerResult(outputs=[OutputFile(PNG, "image/png", ".png")], model="recording",
                                 provider="test", width=1, height=1)

    Recording.task_type = task_type  # type: ignore[attr-defined]
    return Recording


def spec(steps: list[dict[str, Any]], name: str, suppress: bool = False) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": name, "origin_instance": "tests", "steps": steps,
                                        "suppress_subtask_events": suppress})


def states(kafka: KafkaSettings) -> dict[str, list[WorkflowState]]:
    """Every state record per workflow, in order."""
    found: dict[str, list[WorkflowState]] = {}
    for m in read_all(kafka, kafka.topics.workflows_state):
        found.setdefault(m.key().decode(), []).append(CODEC.decode(m.value(), expect=WorkflowState))
    return found


def latest(kafka: KafkaSettings, workflow_id: str) -> WorkflowState | None:
    return (states(kafka).get(workflow_id) or [None])[-1]


def reaches(kafka: KafkaSettings, workflow_id: str, *wanted: WorkflowStatus):
    def check() -> WorkflowState | None:
        state = latest(kafka, workflow_id)
        return state if state is not None and state.status in wanted else None
    return check


def submitted_task_ids(kafka: KafkaSettings) -> Counter[str]:
    return Counter(m.key().decode() for t in TYPES for m in read_all(kafka, kafka.topics.task(t)))


# --------------------------------------------------------------------------- the records


def test_the_workflows_topic_records_are_read_and_checked() -> None:
    wid = new_workflow_id()
    task = status("00000000-0000-4000-8000-000000000003", TaskStatus.COMPLETED, T0, result=True)
    state = fold_all([task.model_copy(update={"generation_id": wid})])
    document = encode_state(state)
    decoded = decode_state(document)
    assert read_workflow_message(CODEC, wid.encode(), document, [("content-type", STATE_CONTENT_TYPE)]) == decoded
    assert read_workflow_message(CODEC, wid, document, []) == decoded  # JSON: told by its first byte
    bad = [
        (b"other", document, []),  # not keyed by its workflow
        (wid.encode(), None, []),  # tombstone
        (wid.encode(), b"not a record", []),
        (wid.encode(), CODEC.encode(task), []),  # an Avro record of another kind
        (wid.encode(), encode_state(fold_all([task])), []),  # a task of no workflow
    ]
    for args in bad:
        with pytest.raises(BadWorkflowRecord):
            read_workflow_message(CODEC, *args)


# --------------------------------------------------------------------------- on the broker


@pytest.mark.integration
def test_workflows_run_on_the_broker(kafka_settings: KafkaSettings, results_dir: Path, tmp_path: Path) -> None:
    kafka = kafka_settings
    ensure_topics(kafka)
    script = Script()
    worker = Worker(kafka, worker_settings(kafka, types=TYPES, task_timeout_s=HOLD_S + 30),
                    {t: {"test": handler_class(t, script)} for t in TYPES}, FileStore(results_dir), None, None)
    running = Running(worker)
    client = WorkflowProducer(kafka, source="tests")
    app = App(kafka, tmp_path, lease_s=1e9)
    app.start()
    try:
        # ---- phase 1: three workflows at once
        ids = {name: new_workflow_id() for name in ("fashion", "diamond", "failing")}
        script.fail.add(step_task_id(ids["failing"], "breaks"))
        flaky = step_task_id(ids["diamond"], "right")
        script.flaky.add(flaky)
        for name, steps in (("fashion", FASHION), ("diamond", DIAMOND), ("failing", FAILING)):
            client.create(spec(steps, name, suppress=name == "fashion"), start=True, workflow_id=ids[name])
        client.create(spec(FASHION, "fashion"), start=True, workflow_id=ids["fashion"])  # a repeat
        stranger = new_workflow_id()
        client.cancel(stranger)  # a command for no workflow: logged, skipped
        junk = Producer(kafka.producer_config())
        junk.produce(kafka.topics.workflows, b"not a record", ids["fashion"])
        assert junk.flush(10) == 0
        ended = {name: wait_for(f"the {name} workflow ended",
                                reaches(kafka, wid, W.COMPLETED, W.FAILED), app, timeout_s=120)
                 for name, wid in ids.items()}

        # ---- phase 2: pause while a step runs; it finishes, nothing new starts; resume
        paused_id = new_workflow_id()
        release_paused = script.hold(step_task_id(paused_id, "generate"))
        client.create(spec(TWO, "paused"), start=False, workflow_id=paused_id)
        wait_for("the CREATED workflow", reaches(kafka, paused_id, W.CREATED), app)
        client.start(paused_id)
        wait_for("its first step running", lambda: script.started[step_task_id(paused_id, "generate")].is_set(), app)
        client.pause(paused_id)
        wait_for("the PAUSED workflow", reaches(kafka, paused_id, W.PAUSED), app)
        release_paused.set()
        at_rest = wait_for("the running step's end recorded while paused", lambda: (
            lambda s: s if s and s.step("generate").status is P.COMPLETED else None)(latest(kafka, paused_id)), app)
        assert at_rest.status is W.PAUSED and at_rest.step("refine").status is P.PENDING
        assert step_task_id(paused_id, "refine") not in submitted_task_ids(kafka)
        client.resume(paused_id)
        resumed = wait_for("the resumed workflow completed", reaches(kafka, paused_id, W.COMPLETED), app)

        # ---- phase 3: cancel while a step runs
        cancel_id = new_workflow_id()
        held = step_task_id(cancel_id, "generate")
        script.hold(held)
        client.create(spec(TWO, "cancelled"), start=True, workflow_id=cancel_id)
        wait_for("the step to cancel running", lambda: script.started[held].is_set(), app)
        client.cancel(cancel_id, reason="not needed", requested_by="tests")
        cancelled = wait_for("the cancelled step recorded", lambda: (
            lambda s: s if s and s.step("generate").status is P.CANCELLED else None)(latest(kafka, cancel_id)), app)

        # ---- phase 4: the processors restart while a step runs
        restart_id = new_workflow_id()
        release_restart = script.hold(step_task_id(restart_id, "generate"))
        client.create(spec(TWO, "restarted"), start=True, workflow_id=restart_id)
        wait_for("the step running before the restart",
                 lambda: script.started[step_task_id(restart_id, "generate")].is_set(), app)
        assert app.stop() == 0, app.tail()
        release_restart.set()  # it ends while the processors are down
        app.start()
        restarted = wait_for("the restarted workflow completed", reaches(kafka, restart_id, W.COMPLETED),
                             app, timeout_s=120)
    finally:
        code = app.stop()
        for event in script.holds.values():
            event.set()
        worker.stop()
        running.join(60)
        client.close()
    assert code == 0, app.tail()
    assert "Traceback" not in app.tail(), app.tail()
    by_task = {tid: params for tid, params in script.runs}

    # The repeated request started nothing twice; the stranger's cancel made no state; the junk
    # record went to the dead letters, and the agent went on.
    fashion_first = step_task_id(ids["fashion"], "generate")
    assert submitted_task_ids(kafka)[fashion_first] == 1 and len(script.ran(fashion_first)) == 1
    assert stranger not in states(kafka)
    [dead] = read_all(kafka, kafka.topics.dlq(kafka.topics.workflows))
    assert dead.value() == b"not a record" and header_dict(dead.headers())["error.class"] == "BadWorkflowRecord"

    # Each step's task record names its workflow and step (what the projection reads), the
    # workflow id also as generation_id (what the worker copies onto the task's statuses).
    records = {m.key().decode(): CODEC.decode(m.value(), expect=None)
               for t in TYPES for m in read_all(kafka, kafka.topics.task(t))}
    for name, wid in ids.items():
        for step in ended[name].steps:
            if step.task_id is None:
                continue
            o = records[step.task_id].orchestration
            assert (o.generation_id, o.workflow_id, o.step_id) == (wid, wid, step.step_id)
            assert o.suppress_events is (name == "fashion")
            assert records[step.task_id].envelope.origin_instance == "tests"

    # The fashion pipeline: each step ran once, fed by its parent's result.
    fashion = ended["fashion"]
    assert fashion.status is W.COMPLETED and all(s.status is P.COMPLETED for s in fashion.steps)
    for parent, child, field in (("generate", "refine", "base_image_url"), ("refine", "cutout", "image_url"),
                                 ("cutout", "adjust", "base_image_url")):
        url = fashion.step(parent).result.result_image_url
        assert url and url.startswith("file://") and Path(url.removeprefix("file://")).is_file()
        assert by_task[fashion.step(child).task_id][field] == url
        assert fashion.step(child).params[field] == url
    assert by_task[fashion.step("adjust").task_id]["brightness"] == 0.1
    assert by_task[fashion.step("generate").task_id]["prompt"] == "a linen dress"

    # The diamond: the join got both branches' results.
    diamond = ended["diamond"]
    assert diamond.status is W.COMPLETED
    join = by_task[diamond.step("join").task_id]
    assert join["base_image_url"] == diamond.step("left").result.result_image_url
    assert join["mask_url"] == diamond.step("right").result.result_image_url
    for branch in ("left", "right"):
        assert by_task[diamond.step(branch).task_id]["base_image_url"] == diamond.step("top").result.result_image_url
    # A retryable failure is the task's business: its policy ran attempt 2, the workflow saw one end.
    assert diamond.step("right").attempt == 2 and len(script.ran(flaky)) == 2
    assert diamond.step("left").attempt == 1

    # The failing step failed the workflow; the step after it never became a task.
    failing = ended["failing"]
    assert failing.status is W.FAILED and failing.failed_step == "breaks"
    assert [s.status for s in failing.steps] == [P.COMPLETED, P.FAILED, P.SKIPPED]
    assert failing.step("breaks").error_code.value == "INVALID_INPUT"
    never = step_task_id(ids["failing"], "never")
    submitted = submitted_task_ids(kafka)
    assert never not in submitted and not script.ran(never)

    # Pause/resume: the second step started only after the resume, and once.
    assert [s.status for s in resumed.steps] == [P.COMPLETED, P.COMPLETED]
    assert submitted[step_task_id(paused_id, "refine")] == 1

    # Cancel: one terminal state, the running step stopped by its cancel, the next one skipped.
    assert cancelled.status is W.CANCELLED and cancelled.message == "not needed by tests"
    assert cancelled.step("refine").status is P.SKIPPED
    assert step_task_id(cancel_id, "refine") not in submitted

    # The restart changed nothing: each step ran once, versions only grow, one terminal state.
    assert [s.status for s in restarted.steps] == [P.COMPLETED, P.COMPLETED]
    for wid in (restart_id, *ids.values(), paused_id, cancel_id):
        history = states(kafka)[wid]
        versions = [s.version for s in history]
        assert versions == sorted(set(versions)), (wid, versions)
        end = next(i for i, s in enumerate(history) if s.status.is_terminal)
        assert all(s.status is history[end].status for s in history[end:]), (wid, history)
    for step in ("generate", "refine"):
        assert len(script.ran(step_task_id(restart_id, step))) == 1
    # every other task ran once: no replay resubmitted a step that already ran
    assert max(Counter(tid for tid, _ in script.runs if tid != flaky).values()) == 1
