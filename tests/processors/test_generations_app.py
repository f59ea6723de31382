"""Generations and the AGENTIC loop: the orchestrator's pieces, then the whole app on the broker.

The broker test runs ``python -m processors.cli`` in a subprocess (``App`` from
test_lifecycle_app) with a scripted evaluator (``PROCESSORS_EVALUATOR_SCRIPT``, scores by prompt
prefix and attempt), plays the GENERATION workers itself (:class:`FakeWorker`: real PNGs under
``tmp_path``, PROCESSING then COMPLETED or FAILED), produces GenerationRequested records and
reads the outcome from the generations.state and evaluations topics. Several scenarios run in
one app at once, one ``generated_prompt`` prefix each. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from PIL import Image, ImageFilter

from generations.agentic import attempt_task_id
from generations.catalog import InMemoryCatalog
from generations.flow import cancel_event_id
from generations.plan import (
    GENERATION_CANCEL_CONTENT_TYPE,
    GENERATION_REQUEST_CONTENT_TYPE,
    GenerationCancelRequested,
    GenerationRequested,
    plan_generation,
)
from generations.record import GenerationRecord, GenerationStatus, decode_record
from processors.app import evaluator_registry
from processors.evaluators.base import EvaluationContext, EvaluatorSettings, default_registry
from processors.evaluators.calibration import load_photo
from processors.evaluators.quality import QualityEvaluator
from processors.evaluators.scripted import NoScript, PromptScriptedEvaluator, ScriptExhausted
from processors.folding import STATE_CONTENT_TYPE, decode_state, encode_state, state_from_json, state_to_json
from processors.generation_messages import BadGenerationRecord, read_generation_message
from processors.orchestrator import Orchestrator
from processors.settings import ProcessorSettings
from projection.db.catalog import PostgresCatalog
from projection.db.migrate import migrate
from schemas.emit import produce_event
from schemas.enums import ErrorCode, EvaluationDecision, TaskStatus, TaskType
from schemas.events import CancelRequested, EvaluationRecorded, ResultMetadata, StatusChanged, TaskError, TaskResult, TaskSubmitted
from schemas.headers import header_dict
from schemas.kafka_settings import KafkaSettings
from schemas.partitioning import key_partition
from schemas.topic_admin import ensure_topics
from state.lifecycle import TaskState, fold_all
from tests.processors.scripted import T0, status
from tests.processors.test_lifecycle_app import CODEC, App, read_all, wait_for

CATALOG = InMemoryCatalog()
SUBJECT = CATALOG.add_subject("Anna", "lora/anna", 0.8)


def cancel_request(gid: str, reason: str | None = "changed my mind") -> GenerationCancelRequested:
    return GenerationCancelRequested(generation_id=gid, requested_at=datetime.now(UTC).isoformat(),
                                     reason=reason, requested_by="api-key:test")


def request(prompt: str, **fields: Any) -> GenerationRequested:
    """A GENERATE request (AGENTIC, scripted evaluator unless ``fields`` say otherwise); its
    plan is drawn from the prompt, so each prompt is its own generation."""
    plan = plan_generation({"strategy": "GENERATE", "subject_id": SUBJECT.id,
                            "shot_type_string": "full-body shot", "generated_prompt": prompt,
                            "width": 256, "height": 256, "generation_type": "AGENTIC",
                            "evaluation_provider": "scripted", **fields},
                           CATALOG, random.Random(prompt))
    return GenerationRequested(plan=plan, requested_at=datetime.now(UTC).isoformat())


def now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- pure pieces


def test_the_fold_keeps_the_generation_id_and_the_document_carries_it() -> None:
    gid = str(uuid.uuid4())
    events = [status("00000000-0000-4000-8000-000000000001", TaskStatus.QUEUED, T0)]
    events.append(events[0].model_copy(update={"generation_id": gid, "status": TaskStatus.PROCESSING}))
    for order in (events, events[::-1]):
        state = fold_all(order)
        assert state is not None and state.generation_id == gid
        assert decode_state(encode_state(state)) == state
    lone = fold_all(events[:1])
    assert lone is not None and lone.generation_id is None
    old = state_to_json(fold_all(events))
    del old["generation_id"]  # a document written before the field existed
    assert state_from_json(old).generation_id is None


def test_generation_records_are_read_by_content_type_and_checked() -> None:
    req = request("pure: read")
    key, value, headers = req.to_record()
    assert read_generation_message(key, value, headers) == req
    assert read_generation_message(key, value, []) == req  # sniffed without the header
    gid = req.plan.generation_id
    task = status("00000000-0000-4000-8000-000000000002", TaskStatus.COMPLETED, T0, result=True)
    state = fold_all([task.model_copy(update={"generation_id": gid})])
    decoded = read_generation_message(key, encode_state(state), [("content-type", STATE_CONTENT_TYPE)])
    assert decoded == decode_state(encode_state(state))
    cancel = cancel_request(gid)
    ckey, cvalue, cheaders = cancel.to_record()
    assert ckey == key and dict(cheaders)["content-type"] == GENERATION_CANCEL_CONTENT_TYPE
    assert read_generation_message(ckey, cvalue, cheaders) == cancel
    assert read_generation_message(ckey, cvalue, []) == cancel  # sniffed
    bad = [
        (b"other", cvalue, cheaders),  # a cancel keyed by another generation
        (key, b'{"generation_id": 1}', [("content-type", GENERATION_CANCEL_CONTENT_TYPE)]),
        (key, None, headers),  # tombstone
        (b"other", value, headers),  # not keyed by its generation
        (key, b"{}", [("content-type", GENERATION_REQUEST_CONTENT_TYPE)]),  # not a request
        (key, b"not json", []),
        (key, value, [("content-type", b"text/plain")]),
        (key, encode_state(fold_all([task])), [("content-type", STATE_CONTENT_TYPE)]),  # no generation
    ]
    for args in bad:
        with pytest.raises(BadGenerationRecord):
            read_generation_message(*args)


def test_the_prompt_scripted_evaluator_scores_by_prefix_and_attempt() -> None:
    scripted = PromptScriptedEvaluator({"a": [0.4, (0.9, ["fine"])], "ab": [0.1]})
    first = scripted.evaluate(None, EvaluationContext(prompt="a cat", attempt=1))
    assert (first.score, first.reasons, first.evaluator) == (0.4, ("scripted score 0.40",), "scripted")
    assert scripted.evaluate(None, EvaluationContext(prompt="a cat", attempt=2)).reasons == ("fine",)
    assert scripted.evaluate(None, EvaluationContext(prompt="abc", attempt=1)).score == 0.1  # longest
    with pytest.raises(ScriptExhausted):
        scripted.evaluate(None, EvaluationContext(prompt="a cat", attempt=3))
    with pytest.raises(NoScript):
        scripted.evaluate(None, EvaluationContext(prompt="zebra", attempt=1))
    settings = ProcessorSettings(evaluator_script={"a": [0.5]})
    assert "scripted" in evaluator_registry(settings).names()
    assert "scripted" not in evaluator_registry(ProcessorSettings()).names()


@dataclass
class FakeOutbox:
    submitted: list[Any] = field(default_factory=list)
    emitted: list[EvaluationRecorded] = field(default_factory=list)
    cancels: list[CancelRequested] = field(default_factory=list)
    flushes: int = 0

    def submit(self, task: Any, origin: Any) -> None:
        self.submitted.append(task)

    def emit(self, event: EvaluationRecorded) -> None:
        self.emitted.append(event)

    def cancel(self, event: CancelRequested) -> None:
        self.cancels.append(event)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass


def _completed(task_id: str, gid: str, url: str) -> Any:
    event = status(task_id, TaskStatus.COMPLETED, T0, result=True)
    result = event.result.model_copy(update={"result_image_url": url})
    return fold_all([event.model_copy(update={"generation_id": gid, "result": result})])


def test_the_orchestrator_carries_out_effects_and_scores_a_bad_image_zero(tmp_path: Path) -> None:
    """In-process: a scripted rejection leads to a retry; an image that cannot be fetched is
    scored 0.0 with the error as its reason (and the loop goes on)."""
    registry = evaluator_registry(ProcessorSettings(evaluator_script={"orch": [0.4, 0.9]}),
                                  default_registry())
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)

    def fetch(url: str) -> Image.Image:
        if url.endswith("missing.png"):
            raise OSError("no such file")
        return Image.open(good)

    outbox = FakeOutbox()
    orch = Orchestrator(outbox, registry, EvaluatorSettings(), fetch)

    async def scenario() -> Any:
        req = request("orch: a shot", max_attempts=3)
        gid = req.plan.generation_id
        record = await orch.on_request(None, req)
        assert await orch.on_request(record, req) is None  # a repeated request changes nothing
        first = record.predictions[0].task_id
        record = await orch.on_task_final(record, _completed(first, gid, good.as_uri()))
        second = record.predictions[0].task_id
        assert second != first and [t.task_id for t in outbox.submitted] == [first, second]
        record = await orch.on_task_final(record, _completed(second, gid, "file:///nowhere/missing.png"))
        third = record.predictions[0].task_id
        assert third not in (first, second)
        return record

    try:
        asyncio.run(scenario())
    finally:
        orch.close()
    scores = [(e.evaluated_attempt, e.score, e.decision) for e in outbox.emitted]
    assert scores == [(1, 0.4, EvaluationDecision.RETRY), (2, 0.0, EvaluationDecision.RETRY)]
    assert "OSError: no such file" in outbox.emitted[1].reasons[0]
    assert outbox.flushes == 3


def test_the_orchestrator_cancels_a_generation_through_the_control_topic(tmp_path: Path) -> None:
    """A cancel asks the workers to stop the running attempt (a deterministic CancelRequested),
    ends the record CANCELLED; what the attempt reports later submits nothing."""
    outbox = FakeOutbox()
    orch = Orchestrator(outbox, evaluator_registry(ProcessorSettings(evaluator_script={"cancel": [0.1]}),
                                                   default_registry()),
                        EvaluatorSettings(), lambda url: Image.new("RGB", (8, 8)))

    async def scenario() -> Any:
        req = request("cancel: a shot", max_attempts=3)
        gid = req.plan.generation_id
        assert await orch.on_cancel(None, cancel_request(gid)) is None  # unknown: ignored
        record = await orch.on_request(None, req)
        task_id = record.predictions[0].task_id
        cancelled = await orch.on_cancel(record, cancel_request(gid))
        assert await orch.on_cancel(cancelled, cancel_request(gid)) is cancelled  # nothing more
        after = await orch.on_task_final(cancelled, _completed(task_id, gid, "file:///r/1.png"))
        return task_id, req, cancelled, after

    try:
        task_id, req, record, after = asyncio.run(scenario())
    finally:
        orch.close()
    assert after is record and record.status is GenerationStatus.CANCELLED
    assert record.predictions[0].status is TaskStatus.CANCELLED
    [event] = outbox.cancels
    assert event.envelope.task_id == task_id and event.envelope.event_id == cancel_event_id(task_id)
    assert event.envelope.task_type is TaskType.GENERATION
    assert (event.reason, event.requested_by) == ("changed my mind", "api-key:test")
    assert [t.task_id for t in outbox.submitted] == [task_id] and outbox.emitted == []
    assert outbox.flushes == 2  # the start, the cancel


def _judged(task_id: str, gid: str, text: str) -> Any:
    event = status(task_id, TaskStatus.COMPLETED, T0, result=True, task_type=TaskType.LLM_INTERACTION)
    result = event.result.model_copy(update={"result_image_url": None, "result_text": text})
    return fold_all([event.model_copy(update={"generation_id": gid, "result": result})])


def test_the_vlm_judge_runs_as_a_task_and_an_unparseable_answer_falls_back_to_quality() -> None:
    """The judge fetches nothing itself; an answer with no score: the weight-free evaluator
    scores the attempt's image (a blank frame: rejected), its first reason saying why."""
    outbox = FakeOutbox()
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    fetched: list[str] = []

    def fetch(url: str) -> Image.Image:
        fetched.append(url)
        return blank

    orch = Orchestrator(outbox, default_registry(), EvaluatorSettings(vlm_model="judge-model"), fetch)

    async def scenario() -> Any:
        req = request("vlm: a shot", evaluation_provider="vlm", max_attempts=2)
        gid = req.plan.generation_id
        record = await orch.on_request(None, req)
        first = record.predictions[0].task_id
        record = await orch.on_task_final(record, _completed(first, gid, "file:///r/1.png"))
        judge = outbox.submitted[-1]
        assert judge.task_type is TaskType.LLM_INTERACTION and fetched == []
        assert judge.params.provider_config == {"model": "judge-model", "image_urls": ["file:///r/1.png"]}
        record = await orch.on_task_final(record, _judged(judge.task_id, gid, "a lovely picture"))
        second = record.predictions[0].task_id
        assert second != first and fetched == ["file:///r/1.png"]  # the fallback rejected it
        record = await orch.on_task_final(record, _completed(second, gid, "file:///r/2.png"))
        judge = outbox.submitted[-1]
        return await orch.on_task_final(record, _judged(judge.task_id, gid, '{"score": 0.8, "reasons": []}'))

    try:
        record = asyncio.run(scenario())
    finally:
        orch.close()
    assert record.status is GenerationStatus.COMPLETED
    fallback = QualityEvaluator().evaluate(blank, EvaluationContext())
    assert fallback.score < 0.7  # a blank frame
    assert [(e.evaluated_attempt, e.score, e.decision) for e in outbox.emitted] == [
        (1, fallback.score, EvaluationDecision.RETRY), (2, 0.8, EvaluationDecision.ACCEPT)]
    assert [e.evaluator for e in outbox.emitted] == ["quality", "vlm"]
    assert outbox.emitted[0].reasons == [
        "the vlm judge gave no score (no score in the judge's answer: 'a lovely picture'); scored by quality",
        *fallback.reasons]


# --------------------------------------------------------------------------- on the broker


def photo_png(path: Path, seed: int, blurred: bool) -> None:
    """A real 256x256 photograph (one of two, by seed): sharp, or blurred beyond use. (Noise would
    not do: the weight-free evaluator rejects it.)"""
    photo = load_photo(("astronaut", "chelsea")[seed % 2])
    image = Image.fromarray(photo).resize((256, 256), Image.Resampling.BOX)
    if blurred:
        image = image.filter(ImageFilter.GaussianBlur(6))
    image.save(path)


class FakeWorker:
    """Plays the GENERATION worker group. A task's behaviour comes from ``behaviours`` (prompt
    prefix → one entry per shot attempt, or per prediction for BASE): ``sharp`` / ``blurred``
    (PROCESSING, then COMPLETED with that PNG), ``fail`` (FAILED, CONTENT_POLICY: final),
    ``retried`` (the task's own retry, issue 17: PROCESSING, QUEUED for attempt 2 with a
    PROVIDER_ERROR, then attempt 2 as ``sharp``) or ``hold`` (nothing until :meth:`release`).
    Each task id is run once."""

    def __init__(self, kafka: KafkaSettings, results: Path, behaviours: dict[str, list[str]]) -> None:
        self.kafka, self.results, self.behaviours = kafka, results, behaviours
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"fake-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe([kafka.topics.task(TaskType.GENERATION)])
        self.producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
        self.tasks: dict[str, TaskSubmitted] = {}  # in arrival order
        self.held: list[TaskSubmitted] = []

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)

    def behaviour(self, task: TaskSubmitted) -> str:
        prompt = task.params.prompt
        prefix = max((p for p in self.behaviours if prompt.startswith(p)), key=len)
        o = task.orchestration
        if o.shot_id is None:
            n = o.prediction_index + 1
        else:
            n = next(i for i in range(1, 11) if attempt_task_id(o.shot_id, i) == task.envelope.task_id)
        return self.behaviours[prefix][n - 1]

    def pump(self) -> None:
        """Run every task record that has arrived."""
        while (msg := self.consumer.poll(0.2)) is not None:
            if msg.error():
                continue
            task = CODEC.decode(msg.value(), expect=None)
            assert isinstance(task, TaskSubmitted)
            if task.envelope.task_id in self.tasks:
                continue
            self.tasks[task.envelope.task_id] = task
            kind = self.behaviour(task)
            if kind == "hold":
                self.held.append(task)
            else:
                self.run(task, kind)
        assert self.producer.flush(30) == 0

    def release(self) -> None:
        held, self.held = self.held, []
        for task in held:
            self.run(task, "sharp")
        assert self.producer.flush(30) == 0

    def run(self, task: TaskSubmitted, kind: str) -> None:
        attempt = task.envelope.attempt

        def emit(st: TaskStatus, **fields: Any) -> None:
            env = task.envelope.model_copy(update={"event_id": str(uuid.uuid4()), "attempt": attempt,
                                                   "occurred_at": now(), "source": "fake-worker"})
            event = StatusChanged(envelope=env, status=st, worker_id="fake-worker",
                                  generation_id=task.orchestration.generation_id, **fields)
            produce_event(self.producer, self.kafka.topics.status, event, codec=CODEC)

        emit(TaskStatus.PROCESSING, progress=0.0)
        if kind == "retried":
            attempt += 1
            emit(TaskStatus.QUEUED, error=TaskError.of(ErrorCode.PROVIDER_ERROR, "scripted blip"))
            emit(TaskStatus.PROCESSING, progress=0.0)
        if kind == "fail":
            emit(TaskStatus.FAILED, error=TaskError.of(ErrorCode.CONTENT_POLICY, "scripted refusal"))
            return
        path = self.results / f"{task.envelope.task_id}.png"
        photo_png(path, task.params.seed or 0, blurred=kind == "blurred")
        emit(TaskStatus.COMPLETED, result=TaskResult(
            result_image_url=path.resolve().as_uri(), seed=task.params.seed,
            metadata=ResultMetadata(model="fake", provider="fake", timing_ms=1, width=256,
                                    height=256, content_type="image/png")))


def latest_records(kafka: KafkaSettings) -> dict[str, GenerationRecord]:
    return {m.key().decode(): decode_record(m.value())
            for m in read_all(kafka, kafka.topics.generations_state)}

def finished(worker: FakeWorker, kafka: KafkaSettings, gids: dict[str, str]
             ) -> dict[str, GenerationRecord] | None:
    """Every generation's latest record once none is RUNNING (the fake worker runs meanwhile)."""
    worker.pump()
    records = latest_records(kafka)
    done = all(gid in records and records[gid].status is not GenerationStatus.RUNNING
               for gid in gids.values())
    return records if done else None



def evaluations(kafka: KafkaSettings) -> dict[str, list[EvaluationRecorded]]:
    by_generation: dict[str, list[EvaluationRecorded]] = defaultdict(list)
    for msg in read_all(kafka, kafka.topics.evaluations):
        event = CODEC.decode(msg.value(), expect=EvaluationRecorded)
        by_generation[event.generation_id].append(event)
    return by_generation


def attempts(record: GenerationRecord) -> list[dict[str, Any]]:
    return record.predictions[0].shot["attempts"]


SCRIPTS = {"accept:": [0.9], "retry:": [0.4, 0.9], "best:": [0.3, 0.6, 0.5], "failed:": [0.0, 0.5],
           "cli:": [0.2, 0.8], "cancel:": [0.4, 0.9]}
BEHAVIOURS = {"accept:": ["retried"], "retry:": ["sharp"] * 2, "best:": ["sharp"] * 3,
              "failed:": ["fail", "sharp"], "base:": ["sharp", "hold"],
              "quality:": ["blurred", "sharp"], "cli:": ["sharp"] * 2, "cancel:": ["hold", "sharp"]}


def cancels(kafka: KafkaSettings) -> list[CancelRequested]:
    return [CODEC.decode(m.value(), expect=CancelRequested) for m in read_all(kafka, kafka.topics.control)]


def forwarded(kafka: KafkaSettings, task_id: str, st: TaskStatus) -> bool:
    """Whether the fold has forwarded ``task_id``'s final state ``st`` to the generations topic."""
    for m in read_all(kafka, kafka.topics.generations):
        if header_dict(m.headers() or []).get("content-type") == STATE_CONTENT_TYPE.decode():
            state = decode_state(m.value())
            if state.task_id == task_id and state.status is st:
                return True
    return False


def final_states(kafka: KafkaSettings, task_id: str) -> list[TaskState]:
    """The final states of ``task_id`` the fold forwarded to the generations topic."""
    return [state for m in read_all(kafka, kafka.topics.generations)
            if header_dict(m.headers() or []).get("content-type") == STATE_CONTENT_TYPE.decode()
            and (state := decode_state(m.value())) is not None and state.task_id == task_id]


def sentinel(kafka: KafkaSettings, gid: str) -> GenerationRequested:
    """A request in ``gid``'s partition: once its record exists, the orchestrator has applied
    everything that partition held before it."""
    want = key_partition(gid.encode(), kafka.partitions)
    return next(r for n in range(100) if key_partition(
        (r := request(f"accept: sentinel {n}")).plan.generation_id.encode(), kafka.partitions) == want)


def computectl_generate(kafka: KafkaSettings, database_url: str, subject_id: str,
                        out: Path) -> subprocess.Popen:
    """``computectl generate ... --agentic --wait`` as a user runs it, its JSON into ``out``."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "KAFKA_PARTITIONS": str(kafka.partitions),
           "DATABASE_URL": database_url}
    args = ["generate", "generate", "-p", "shot_type_string=full-body shot", "-p",
            "generated_prompt=cli: a shot", "-p", f"subject_id={subject_id}", "-p",
            "evaluation_provider=scripted", "--agentic", "--wait", "120", "--output", "json"]
    with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
        return subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", *args],
                                env=env, stdout=stdout, stderr=stderr)


@pytest.mark.integration
def test_generations_run_the_agentic_loop_on_the_broker(kafka_settings: KafkaSettings, database_url: str,
                                                        results_dir: Path, tmp_path: Path) -> None:
    kafka = kafka_settings
    ensure_topics(kafka)
    migrate(database_url)
    subject = PostgresCatalog(database_url).add_subject("Cleo", "loras/cleo", 0.7)
    requests = {
        "accept": request("accept: a shot"),
        "retry": request("retry: a shot"),
        "best": request("best: a shot"),
        "failed": request("failed: a shot", max_attempts=2),
        "base": request("base: two shots", generation_type="BASE", batch_size=2),
        "quality": request("quality: a shot", evaluation_provider="quality", max_attempts=2),
    }
    gids = {name: r.plan.generation_id for name, r in requests.items()}
    cancelled = request("cancel: a shot")  # its attempt is held, then the generation cancelled
    cancel_gid = cancelled.plan.generation_id
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
    partitions: dict[bytes, int] = {}
    for r in [*requests.values(), requests["accept"], cancelled]:  # the first one twice: no second start
        key, value, headers = r.to_record()
        producer.produce(kafka.topics.generations, value, key, headers=headers,
                         on_delivery=lambda err, msg: partitions.update({msg.key(): msg.partition()}))
    producer.produce(kafka.topics.generations, b"not a record", b"junk")
    assert producer.flush(30) == 0
    # The fold forwards final states to the partition confluent-kafka gives the same key.
    assert all(key_partition(k, kafka.partitions) == p for k, p in partitions.items())

    app = App(kafka, tmp_path, lease_s=1e9, evaluator_script=json.dumps(SCRIPTS))
    app.env["RESULTS_URL"] = results_dir.resolve().as_uri()
    worker = FakeWorker(kafka, results_dir, BEHAVIOURS)
    app.start()
    cli = computectl_generate(kafka, database_url, subject.id, tmp_path / "generate.json")
    try:
        def base_half_done() -> bool:
            worker.pump()
            record = latest_records(kafka).get(gids["base"])
            held = {t.orchestration.generation_id for t in worker.held}
            return bool(record and record.predictions[0].status is TaskStatus.COMPLETED
                        and held == {gids["base"], cancel_gid} and len(worker.held) == 2)

        wait_for("the BASE generation's first task completed", base_half_done, app, timeout_s=120)
        base = latest_records(kafka)[gids["base"]]
        assert base.status is GenerationStatus.RUNNING  # its second task is still held
        assert base.predictions[1].status is TaskStatus.PROCESSING

        # Cancel the AGENTIC generation whose first attempt is held (running).
        [held] = [t.envelope.task_id for t in worker.held if t.orchestration.generation_id == cancel_gid]
        key, value, headers = cancel_request(cancel_gid).to_record()
        producer.produce(kafka.topics.generations, value, key, headers=headers)
        assert producer.flush(30) == 0
        [stop] = wait_for("the CancelRequested of the held attempt", lambda: [
            c for c in cancels(kafka) if c.envelope.task_id == held], app)
        at_cancel = wait_for("the cancelled generation's record", lambda: (
            lambda r: r if r and r.status is GenerationStatus.CANCELLED else None)(
            latest_records(kafka).get(cancel_gid)), app)
        # The held attempt now ends COMPLETED anyway (the fake worker ignores the control topic):
        # the generation stays as it is, and no evaluation or retry follows.
        worker.release()
        wait_for("the held attempt's final state forwarded", lambda: forwarded(kafka, held, TaskStatus.COMPLETED), app)
        late = sentinel(kafka, cancel_gid)
        key, value, headers = late.to_record()
        producer.produce(kafka.topics.generations, value, key, headers=headers)
        assert producer.flush(30) == 0
        wait_for("the sentinel generation started", lambda: late.plan.generation_id in latest_records(kafka), app)

        records = wait_for("every generation finished", lambda: finished(worker, kafka, gids), app,
                           timeout_s=120)
        wait_for("the dead letter", lambda: read_all(kafka, kafka.topics.dlq(kafka.topics.generations)), app)
        wait_for("computectl generate --wait to return", lambda: (worker.pump(), cli.poll())[1] is not None,
                 app, timeout_s=120)
    finally:
        code = app.stop()
        worker.close()
        if cli.poll() is None:
            cli.kill()
    assert code == 0, app.tail()
    # The user's view: computectl generate planned it, waited, and shows the loop's outcome.
    assert cli.wait() == 0, (tmp_path / "generate.err").read_text()
    shown = json.loads((tmp_path / "generate.json").read_text())
    assert shown["status"] == "COMPLETED"
    [prediction] = shown["predictions"]
    assert prediction["status"] == "COMPLETED"
    assert [a["score"] for a in prediction["shot"]["attempts"]] == [0.2, 0.8]
    assert prediction["task_id"] == prediction["shot"]["attempts"][1]["task_id"]
    assert "Traceback" not in app.tail(), app.tail()

    by_gid = {name: records[gid] for name, gid in gids.items()}
    evals = evaluations(kafka)
    assert all(r.status is GenerationStatus.COMPLETED for r in by_gid.values()), by_gid

    def decisions(name: str) -> list[tuple[int, float, str | None]]:
        return [(e.evaluated_attempt, e.score, e.decision and e.decision.value)
                for e in sorted(evals[gids[name]], key=lambda e: e.evaluated_attempt)]

    def tasks_of(name: str) -> list[TaskSubmitted]:
        return [t for t in worker.tasks.values() if t.orchestration.generation_id == gids[name]]

    # Accepted at attempt 1; the repeated request started nothing twice. Its task was retried
    # by the worker (QUEUED for task attempt 2, issue 17): the loop saw only the task's one end.
    accept = by_gid["accept"]
    assert decisions("accept") == [(1, 0.9, "ACCEPT")]
    assert len(tasks_of("accept")) == 1 and accept.version >= 2
    [accepted_task] = tasks_of("accept")
    ends = final_states(kafka, accepted_task.envelope.task_id)
    assert [(e.status, e.attempt) for e in ends] == [(TaskStatus.COMPLETED, 2)]
    assert accept.predictions[0].result["result_image_url"].startswith("file://")

    # Rejected, then accepted at attempt 2 with a new seed.
    assert decisions("retry") == [(1, 0.4, "RETRY"), (2, 0.9, "ACCEPT")]
    first, second = tasks_of("retry")
    assert first.params.seed != second.params.seed
    assert by_gid["retry"].predictions[0].task_id == second.envelope.task_id
    assert evals[gids["retry"]][0].reasons == ["scripted score 0.40"]

    # Three rejections: the best of three (by score) is accepted.
    assert decisions("best") == [(1, 0.3, "RETRY"), (2, 0.6, "RETRY"), (3, 0.5, "ACCEPT_BEST")]
    best = tasks_of("best")
    assert len(best) == 3 and by_gid["best"].predictions[0].task_id == best[1].envelope.task_id
    assert evals[gids["best"]][-1].accepted_task_id == best[1].envelope.task_id

    # A FAILED attempt counts toward max_attempts (2): one retry, then the best scored one.
    failed = tasks_of("failed")
    assert len(failed) == 2 and decisions("failed") == [(2, 0.5, "ACCEPT_BEST")]
    assert [a["status"] for a in attempts(by_gid["failed"])] == ["FAILED", "COMPLETED"]
    assert by_gid["failed"].predictions[0].task_id == failed[1].envelope.task_id

    # BASE: no evaluation; COMPLETED once both tasks completed (checked RUNNING in between).
    assert gids["base"] not in evals and len(tasks_of("base")) == 2
    assert [p.status for p in by_gid["base"].predictions] == [TaskStatus.COMPLETED] * 2

    # The weight-free evaluator rejects the blurred attempt and accepts the sharp one.
    quality = sorted(evals[gids["quality"]], key=lambda e: e.evaluated_attempt)
    assert [e.decision for e in quality] == [EvaluationDecision.RETRY, EvaluationDecision.ACCEPT]
    assert quality[0].score < 0.7 <= quality[1].score
    assert any("blurry" in reason for reason in quality[0].reasons)
    assert by_gid["quality"].predictions[0].task_id == tasks_of("quality")[1].envelope.task_id

    [dead] = read_all(kafka, kafka.topics.dlq(kafka.topics.generations))
    assert dead.key() == b"junk"
    assert header_dict(dead.headers())["original.topic"] == kafka.topics.generations

    # Cancelled: the held attempt was asked to stop (a deterministic event id), the record ended
    # CANCELLED with its prediction CANCELLED, and nothing changed after the attempt completed.
    assert stop.envelope.event_id == cancel_event_id(held) and stop.reason == "changed my mind"
    assert stop.requested_by == "api-key:test" and stop.envelope.task_type is TaskType.GENERATION
    assert [c.envelope.task_id for c in cancels(kafka)] == [held]
    final_record = latest_records(kafka)[cancel_gid]
    assert final_record == at_cancel and final_record.cancel_requested_at is not None
    assert [p.status for p in final_record.predictions] == [TaskStatus.CANCELLED]
    assert [a["status"] for a in attempts(final_record)] == ["CANCELLED"]
    assert [t.envelope.task_id for t in worker.tasks.values()
            if t.orchestration.generation_id == cancel_gid] == [held]
    assert cancel_gid not in evals


def _decisions(events: list[EvaluationRecorded]) -> list[tuple[int, float, str | None]]:
    """Each evaluation once (a replay repeats an event with the same id), by attempt."""
    unique = {e.envelope.event_id: e for e in events}.values()
    return sorted((e.evaluated_attempt, e.score, e.decision and e.decision.value) for e in unique)


@pytest.mark.integration
def test_generations_finish_the_same_after_a_kill(kafka_settings: KafkaSettings,
                                                  results_dir: Path, tmp_path: Path) -> None:
    """SIGKILLed mid-loop and restarted, the app recovers its generations table from the
    records topic and replays what was not committed: the same decisions, each task once."""
    kafka = kafka_settings
    ensure_topics(kafka)
    requests = {"best": request("best: after a kill"), "retry": request("retry: after a kill")}
    gids = {name: r.plan.generation_id for name, r in requests.items()}
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
    for r in requests.values():
        key, value, headers = r.to_record()
        producer.produce(kafka.topics.generations, value, key, headers=headers)
    assert producer.flush(30) == 0

    app = App(kafka, tmp_path, lease_s=1e9, evaluator_script=json.dumps(SCRIPTS))
    app.env["RESULTS_URL"] = results_dir.resolve().as_uri()
    worker = FakeWorker(kafka, results_dir, BEHAVIOURS)

    app.start()
    try:
        wait_for("a first evaluation", lambda: (worker.pump(), evaluations(kafka))[1], app, timeout_s=120)
        app.stop(signal.SIGKILL)
        worker.pump()  # what the app submitted before it died runs meanwhile
        app.start()
        records = wait_for("every generation finished", lambda: finished(worker, kafka, gids), app,
                           timeout_s=120)
    finally:
        code = app.stop()
        worker.close()
    assert code == 0, app.tail()

    evals = evaluations(kafka)
    assert _decisions(evals[gids["best"]]) == [(1, 0.3, "RETRY"), (2, 0.6, "RETRY"), (3, 0.5, "ACCEPT_BEST")]
    assert _decisions(evals[gids["retry"]]) == [(1, 0.4, "RETRY"), (2, 0.9, "ACCEPT")]
    assert all(records[gid].status is GenerationStatus.COMPLETED for gid in gids.values())
    per_generation = defaultdict(int)
    for task in worker.tasks.values():
        per_generation[task.orchestration.generation_id] += 1
    assert per_generation == {gids["best"]: 3, gids["retry"]: 2}
