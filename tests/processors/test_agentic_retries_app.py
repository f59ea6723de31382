"""An AGENTIC IMAGE_ADJUSTING generation on the real stack: the processors app (subprocess, the
scripted evaluator keyed by prompt prefix, as in test_generations_app), a real worker running the
weight-free IMAGE_ADJUSTER handler on the broker, and files on disk. The evaluator rejects
attempt 1 as underexposed and attempt 2 as low in contrast: attempt 2 is brighter, attempt 3 has
more contrast, and each attempt's image differs from the one before in that direction."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from confluent_kafka import Producer
from PIL import Image

from generations.catalog import InMemoryCatalog
from generations.plan import GenerationRequested, plan_generation
from generations.record import GenerationRecord, GenerationStatus
from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.storage import FileStore
from schemas.enums import EvaluationDecision
from schemas.kafka_settings import KafkaSettings
from schemas.topic_admin import ensure_topics
from tests.gpu_consumers.runtime_helpers import Running, make_worker
from tests.processors.test_generations_app import evaluations, latest_records
from tests.processors.test_lifecycle_app import App, wait_for

DARK = "clipped shadows: underexposed (exposure 0.20; 0% of pixels with a channel at >= 254, 31% black)"
FLAT = "faded: low contrast (contrast 0.30)"
SCRIPTS = {"steer:": [[0.2, [DARK]], [0.3, [FLAT]], [0.9, ["fine"]]]}


def luma(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


@pytest.mark.integration
def test_agentic_retries_of_a_classical_handler_differ_and_follow_the_reasons(
        kafka_settings: KafkaSettings, results_dir: Path, tmp_path: Path) -> None:
    kafka = kafka_settings
    ensure_topics(kafka)
    base = tmp_path / "inputs" / "dim.png"
    base.parent.mkdir()
    # A dim, flat gradient: room to get brighter and more contrasty without clipping.
    ramp = np.linspace(30, 110, 48)[None, :, None] * np.ones((32, 1, 3))
    Image.fromarray(ramp.astype(np.uint8)).save(base)
    plan = plan_generation({"strategy": "IMAGE_ADJUSTING", "base_image_url": base.as_uri(),
                            "prompt": "steer: a touch warmer", "generation_type": "AGENTIC",
                            "evaluation_provider": "scripted"}, InMemoryCatalog(), random.Random(7))
    gid = plan.generation_id
    key, value, headers = GenerationRequested(plan=plan, requested_at=datetime.now(UTC).isoformat()).to_record()
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
    producer.produce(kafka.topics.generations, value, key, headers=headers)
    assert producer.flush(30) == 0

    app = App(kafka, tmp_path, lease_s=1e9, evaluator_script=json.dumps(SCRIPTS))
    app.env["RESULTS_URL"] = results_dir.resolve().as_uri()
    fetcher = InputFetcher(InputSettings(allowed_file_roots=[tmp_path]))
    worker = Running(make_worker(kafka, ImageAdjusterHandler(), FileStore(results_dir), fetcher=fetcher),
                     max_tasks=3)
    app.start()
    try:
        def done() -> GenerationRecord | None:
            record = latest_records(kafka).get(gid)
            return record if record and record.status is not GenerationStatus.RUNNING else None

        record = wait_for("the AGENTIC generation to finish", done, app, timeout_s=180)
        stats = worker.join(60)
    finally:
        code = app.stop()
    assert code == 0, app.tail()
    assert record.status is GenerationStatus.COMPLETED
    assert (stats.completed, stats.failed) == (3, 0)

    [prediction] = record.predictions
    attempts = prediction.shot["attempts"]
    params = [a["params"] for a in attempts]
    # Steered by the reasons: attempt 2 brighter; attempt 3 keeps that and adds contrast. The
    # guidance stays as written (the numbers carry the steering and add to what it asks for).
    assert [(p["brightness"], p["contrast"]) for p in params] == [(None, None), (0.15, None), (0.15, 0.15)]
    assert {p["prompt"] for p in params} == {"steer: a touch warmer"}
    decisions = sorted((e.evaluated_attempt, e.decision) for e in evaluations(kafka)[gid])
    assert decisions == [(1, EvaluationDecision.RETRY), (2, EvaluationDecision.RETRY), (3, EvaluationDecision.ACCEPT)]
    assert prediction.task_id == attempts[2]["task_id"]

    # The images: three different outputs, each moved the way its reason asked.
    files = [Path(urlparse(prediction.results[a["task_id"]]["result_image_url"]).path) for a in attempts]
    first, second, third = (luma(f) for f in files)
    assert len({f.read_bytes() for f in files}) == 3
    assert second.mean() > first.mean() + 5  # "underexposed" -> brighter
    assert third.std() > second.std() * 1.1  # "low contrast" -> more contrast
    for a in attempts:  # the guidance ("warmer") was read every time, and the result says how
        result = prediction.results[a["task_id"]]
        assert result["metadata"]["model"] == "numpy-color-adjust+keywords"
        decision = json.loads(Path(urlparse(result["output_urls"][1]).path).read_text())
        assert decision["values"] == {"warmth": 0.1} and decision["matched"] == ["warmer"]
    assert json.loads(Path(urlparse(prediction.results[attempts[2]["task_id"]]["output_urls"][1]).path)
                      .read_text())["applied"] == {"brightness": 0.15, "contrast": 0.15, "warmth": 0.1}
