"""Provider routing and fallback (gpu_consumers/providers.py).

The rules as pure functions first (capabilities, which failures fall back, the settings), then
workers on the real broker with two scripted GENERATION providers: capability routing, a
fallback after the primary's retryable failure (within the attempt; the metadata names the
fallback; the counter counts it), no fallback for a bad task, and no route = today's behaviour.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
import torch  # here, not in the handler: its first import would outlast the 1 s time limit
from prometheus_client import generate_latest

from gpu_consumers.errors import InvalidInput, ProviderError, ProviderTimeout, StorageFailure
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.models import ModelRegistry, Role
from gpu_consumers.providers import (
    CAPABILITY,
    Capabilities,
    ProviderRoute,
    ProviderSpec,
    TaskSize,
    fallback_reason,
    plan,
    registry_for,
    task_size,
    with_provider_handlers,
)
from gpu_consumers.runtime import Worker
from gpu_consumers.settings import WorkerSettings
from gpu_consumers.storage import FileStore
from producers.submit import TaskProducer
from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.events import ResultMetadata
from schemas.kafka_settings import KafkaSettings
from schemas.task_params import GenerationParams, RefineParams, VideoGenerationParams
from tests.gpu_consumers.runtime_helpers import PNG, Running, worker_settings
from tests.gpu_consumers.test_runtime import kafka, status_log  # noqa: F401  (topics, statuses)
from tests.gpu_consumers.test_worker_e2e import (  # noqa: F401  (worker processes, tiny models)
    inputs,
    model_cache_dir,
    statuses,
    workers,
)

GEN = TaskType.GENERATION
ROUTE = ProviderRoute(
    primary=ProviderSpec(name="big-gpu", provider_type="big",
                         capabilities=Capabilities(max_pixels=64 * 64)),
    fallback=ProviderSpec(name="small-cpu", provider_type="small",
                          capabilities=Capabilities(max_width=128, max_height=128)))


def _gen(width: int, height: int) -> GenerationParams:
    return GenerationParams(prompt="p", width=width, height=height)


# --------------------------------------------------------------------------- the rules


def test_capabilities_pick_the_primary_the_fallback_or_refuse_naming_each_limit():
    assert [c.spec.name for c in plan(GEN, ROUTE, _gen(64, 64))] == ["big-gpu", "small-cpu"]
    [only] = plan(GEN, ROUTE, _gen(96, 96))
    assert (only.spec.name, only.fallback_reason) == ("small-cpu", CAPABILITY)
    with pytest.raises(InvalidInput) as over_both:
        plan(GEN, ROUTE, _gen(256, 64))
    message = str(over_both.value)
    assert "big-gpu" in message and "max_pixels 4,096" in message
    assert "small-cpu" in message and "width 256 > max_width 128" in message
    alone = ProviderRoute(primary=ROUTE.primary)
    assert [c.spec.name for c in plan(GEN, alone, _gen(64, 64))] == ["big-gpu"]
    with pytest.raises(InvalidInput, match="no fallback is configured"):
        plan(GEN, alone, _gen(128, 64))


def test_task_sizes_come_from_the_parameters_that_state_them():
    assert task_size(GEN, _gen(64, 128)) == TaskSize(64, 128)
    refine = RefineParams(base_image_url="http://example.com/a.png", target_width=512, target_height=256)
    assert task_size(TaskType.REFINE, refine).pixels == 512 * 256
    video = VideoGenerationParams(base_image_url="http://example.com/a.png", fps=10, duration=2.5)
    assert task_size(TaskType.VIDEO_GENERATION, video) == TaskSize(frames=25)
    assert Capabilities(max_frames=24).refusal(TaskSize(frames=25)) == "25 frames > max_frames 24"
    assert Capabilities(max_frames=25).refusal(TaskSize(frames=25)) is None


def test_which_failures_of_the_primary_fall_back():
    assert fallback_reason(ProviderError("x")) == "PROVIDER_ERROR"
    assert fallback_reason(ProviderTimeout("x")) == "PROVIDER_TIMEOUT"
    oom = ProviderError("GPU out of memory")
    oom.out_of_memory = True  # type: ignore[attr-defined]  # as execution.py marks it
    assert fallback_reason(oom) == "GPU_OUT_OF_MEMORY"
    stop = ProviderError("the handler process was killed")
    stop.stopped_worker = True  # type: ignore[attr-defined]
    assert fallback_reason(stop) is None  # the poison-task rule decides those
    assert fallback_reason(InvalidInput("x")) is None
    assert fallback_reason(StorageFailure("x")) is None


def test_routes_are_read_from_the_environment_and_a_yaml_file(tmp_path, monkeypatch):
    routes = tmp_path / "providers.yaml"
    routes.write_text("image_adjuster:\n  primary: {name: adjust, provider_type: classical}\n"
                      "generation:\n  primary: {name: from-file}\n")
    monkeypatch.setenv("WORKER_PROVIDERS_FILE", str(routes))
    monkeypatch.setenv("WORKER_PROVIDERS", json.dumps({"generation": {
        "primary": {"name": "flux", "models": {"text_to_image": "black-forest-labs/FLUX.1-dev"},
                    "capabilities": {"max_pixels": 1048576}},
        "fallback": {"name": "sdxl", "provider_config": {"num_inference_steps": 20}}}}))
    settings = WorkerSettings()
    assert settings.providers[GEN].primary.name == "flux"  # the variable wins over the file
    assert settings.providers[GEN].fallback.provider_config == {"num_inference_steps": 20}
    assert settings.providers[TaskType.IMAGE_ADJUSTER].primary.provider_type == "classical"
    monkeypatch.setenv("WORKER_PROVIDERS", '{"generation": {"primary": {"name": "x", "models": {"unet": "y"}}}}')
    with pytest.raises(ValueError, match="unknown model role"):
        WorkerSettings()
    monkeypatch.setenv("WORKER_PROVIDERS", '{"generation": {"primary": {"name": "x", "max_pixels": 5}}}')
    with pytest.raises(ValueError, match="max_pixels"):  # a misplaced capability is refused
        WorkerSettings()


def test_a_provider_naming_a_missing_implementation_stops_the_worker_at_start():
    with pytest.raises(ValueError, match="provider_type 'gpu' does not exist"):
        with_provider_handlers({GEN: {"big": object}}, {GEN: ProviderRoute(
            primary=ProviderSpec(name="p", provider_type="gpu"))})


def test_a_provider_with_its_own_models_gets_its_own_registry(tmp_path):
    base = ModelRegistry("production", tmp_path)
    spec = ProviderSpec(name="flux", models={"text_to_image": "black-forest-labs/FLUX.1-dev"})
    own = registry_for(base, spec)
    assert own.path_for(Role.TEXT_TO_IMAGE) == "black-forest-labs/FLUX.1-dev"
    assert own.path_for(Role.INPAINT) == base.path_for(Role.INPAINT)  # the rest as the worker's
    assert base.path_for(Role.TEXT_TO_IMAGE) == "stabilityai/stable-diffusion-xl-base-1.0"


def test_an_old_reader_default_leaves_the_new_metadata_fields_empty():
    meta = ResultMetadata(model="m", provider="diffusers", timing_ms=1)
    assert (meta.provider_name, meta.fallback_reason) == (None, None)


# --------------------------------------------------------------------------- on the broker


class Provider:
    """A scripted GENERATION provider: the prompt ``fail:<CODE>`` makes the ``big`` one fail
    with that code; otherwise it returns a 1x1 PNG naming itself as its model."""

    task_type = GEN

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: list[tuple[str, int, Any]] = []
        self._lock = threading.Lock()

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
        with self._lock:
            self.runs.append((ctx.task_id, ctx.attempt, params.provider_type))
        verb, _, code = params.prompt.partition(":")
        if verb == "oom" and self.name == "big":  # also on its low_memory run
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (scripted)")
        if verb == "slow" and self.name == "big":  # past the time limit, then stops at its token
            while not ctx.cancel.cancelled:
                time.sleep(0.01)  # one simulated denoising step
            ctx.cancel.raise_if_cancelled()
        if verb == "fail" and self.name == "big":
            raise {"PROVIDER_ERROR": ProviderError, "INVALID_INPUT": InvalidInput}[code](
                f"scripted {code} of {self.name}")
        return HandlerResult(outputs=[OutputFile(PNG, "image/png", ".png")], model=f"model-{self.name}",
                             provider=self.name, seed=1, width=params.width, height=params.height)


def _worker(kafka: KafkaSettings, results_dir: Any, routes: dict | None,
            **overrides: Any) -> tuple[Worker, Provider, Provider]:
    big, small = Provider("big"), Provider("small")
    settings = worker_settings(kafka, types=[GEN], providers=routes or {}, **overrides)
    worker = Worker(kafka, settings, {GEN: {"big": lambda: big, "small": lambda: small}},
                    FileStore(results_dir), None, None)
    return worker, big, small


def _submit(kafka: KafkaSettings, *tasks: tuple[str, int, int]) -> list[str]:
    with TaskProducer(kafka) as producer:
        return [producer.submit(GEN, {"prompt": p, "width": w, "height": h}) for p, w, h in tasks]


def _fallbacks(worker: Worker, reason: str) -> float | None:
    return worker.providers.metrics.get_sample_value(
        "compute_worker_provider_fallbacks_total", {"task_type": "generation", "reason": reason})


@pytest.mark.integration
def test_capability_routing_on_the_broker(kafka, status_log, results_dir):  # noqa: F811
    worker, big, small = _worker(kafka, results_dir, {GEN: ROUTE})
    fits, over_primary, over_both = _submit(
        kafka, ("ok", 64, 64), ("ok", 96, 96), ("ok", 256, 256))

    stats = Running(worker, max_tasks=3).join()

    status_log.wait_terminal(fits, over_primary, over_both)
    assert (stats.completed, stats.failed, stats.fallbacks) == (2, 1, 1)
    on_primary = status_log.state(fits).result.metadata
    assert (on_primary.provider_name, on_primary.fallback_reason, on_primary.model) == (
        "big-gpu", None, "model-big")
    on_fallback = status_log.state(over_primary).result.metadata
    assert (on_fallback.provider_name, on_fallback.fallback_reason, on_fallback.model) == (
        "small-cpu", "capability", "model-small")
    refused = status_log.state(over_both)
    assert refused.status is TaskStatus.FAILED and refused.error_code is ErrorCode.INVALID_INPUT
    assert "big-gpu" in refused.error_message and "small-cpu" in refused.error_message
    # Each ran where it was sent, with its implementation's own provider_type; the refused one nowhere.
    assert big.runs == [(fits, 1, "big")] and small.runs == [(over_primary, 1, "small")]
    assert _fallbacks(worker, "capability") == 1.0


@pytest.mark.integration
def test_a_retryable_failure_of_the_primary_runs_on_the_fallback_in_the_same_attempt(
        kafka, status_log, results_dir):  # noqa: F811
    worker, big, small = _worker(kafka, results_dir, {GEN: ROUTE}, metrics_port=0, task_timeout_s=1.0)
    flaky, bad, oom, slow = _submit(kafka, ("fail:PROVIDER_ERROR", 64, 64), ("fail:INVALID_INPUT", 64, 64),
                                    ("oom", 64, 64), ("slow", 64, 64))

    stats = Running(worker, max_tasks=4).join()

    status_log.wait_terminal(flaky, bad, oom, slow)
    state = status_log.state(flaky)
    assert state.status is TaskStatus.COMPLETED and state.attempt == 1
    meta = state.result.metadata
    assert (meta.provider_name, meta.fallback_reason, meta.model) == ("small-cpu", "PROVIDER_ERROR", "model-small")
    # Within the attempt: no FAILED event, no retry; the primary ran once, then the fallback.
    assert TaskStatus.FAILED not in [e.status for e in status_log.events[flaky]]
    assert [r for r in big.runs if r[0] == flaky] == [(flaky, 1, "big")]
    assert [r for r in small.runs if r[0] == flaky] == [(flaky, 1, "small")]
    # A bad task is the task's fault: the fallback would refuse it too. No fallback.
    refused = status_log.state(bad)
    assert refused.status is TaskStatus.FAILED and refused.error_code is ErrorCode.INVALID_INPUT
    assert all(r[0] != bad for r in small.runs)
    # A GPU out of memory falls back after its low_memory run; a time limit at once.
    for task_id, reason in ((oom, "GPU_OUT_OF_MEMORY"), (slow, "PROVIDER_TIMEOUT")):
        state = status_log.state(task_id)
        assert state.status is TaskStatus.COMPLETED and state.attempt == 1
        assert (state.result.metadata.provider_name, state.result.metadata.fallback_reason) == ("small-cpu", reason)
        assert _fallbacks(worker, reason) == 1.0
    assert [r for r in big.runs if r[0] == oom] == [(oom, 1, "big")] * 2  # normal, then low_memory
    assert (stats.completed, stats.failed, stats.retried, stats.fallbacks) == (3, 1, 0, 3)
    assert _fallbacks(worker, "PROVIDER_ERROR") == 1.0
    assert _fallbacks(worker, "INVALID_INPUT") is None
    exposition = generate_latest(worker.providers.metrics).decode()
    assert 'compute_worker_provider_fallbacks_total{reason="PROVIDER_ERROR",task_type="generation"} 1.0' in exposition


@pytest.mark.integration
def test_without_a_fallback_a_failure_is_retried_as_before_and_without_routes_nothing_changes(
        kafka, status_log, results_dir):  # noqa: F811
    alone = {GEN: ProviderRoute(primary=ROUTE.primary)}
    worker, big, small = _worker(kafka, results_dir, alone, retry_max_attempts=2)
    [flaky] = _submit(kafka, ("fail:PROVIDER_ERROR", 64, 64))
    stats = Running(worker, max_tasks=1).join()
    status_log.wait_terminal(flaky)
    state = status_log.state(flaky)
    assert state.status is TaskStatus.FAILED and state.error_code is ErrorCode.PROVIDER_ERROR
    assert state.attempt == 2 and [r[1] for r in big.runs] == [1, 2] and small.runs == []
    assert (stats.retried, stats.fallbacks) == (1, 0)

    plain, _, _ = _worker(kafka, results_dir, None)
    [task] = _submit(kafka, ("ok", 64, 64))
    assert Running(plain, max_tasks=1).join().completed == 1
    status_log.wait_terminal(task)
    meta = status_log.state(task).result.metadata
    assert (meta.provider_name, meta.fallback_reason, meta.model) == (None, None, "model-big")


# --------------------------------------------------------------------------- computectl worker


@pytest.mark.integration
def test_a_worker_process_routes_refine_between_a_diffusion_and_a_classical_provider(
        kafka, statuses, workers, inputs):  # noqa: F811
    """The real ``computectl worker`` (supervised, tiny offline models), routes from
    WORKER_PROVIDERS: the diffusion primary takes 64 x 64, the classical fallback what is over its
    pixels, nothing takes what is over both; the worker serves its fallback counter."""
    routes = {"refine": {
        "primary": {"name": "refine-diffusion", "provider_type": "diffusers",
                    "capabilities": {"max_pixels": 64 * 64}},
        "fallback": {"name": "refine-classical", "provider_type": "classical",
                     "capabilities": {"max_width": 128, "max_height": 128}}}}
    with socket.socket() as probe:  # a free port for the worker's metrics
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = inputs.image("base.png", (32, 32))
    with TaskProducer(kafka) as producer:
        small, large, huge = [producer.submit(TaskType.REFINE, {
            "base_image_url": base, "target_width": w, "target_height": w}) for w in (64, 128, 256)]
    worker = workers("refine", "--burst", "--idle-timeout", "120", env={
        "WORKER_PROVIDERS": json.dumps(routes), "WORKER_METRICS_PORT": str(port)})

    statuses.wait(lambda log: all((s := log.state(t)) is not None and s.is_terminal
                                  for t in (small, large, huge)),
                  "the three terminal statuses", also=worker.check_alive)
    on_primary, on_fallback = (statuses.state(t).result.metadata for t in (small, large))
    assert (on_primary.provider, on_primary.provider_name, on_primary.fallback_reason) == (
        "diffusers", "refine-diffusion", None)
    assert (on_fallback.provider, on_fallback.provider_name, on_fallback.fallback_reason) == (
        "classical", "refine-classical", "capability")
    assert (on_primary.width, on_fallback.width) == (64, 128)
    refused = statuses.state(huge)
    assert (refused.status, refused.error_code) == (TaskStatus.FAILED, ErrorCode.INVALID_INPUT)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'compute_worker_provider_fallbacks_total{reason="capability",task_type="refine"} 1.0' in metrics
    summary = worker.stop()
    assert (summary["completed"], summary["failed"], summary["fallbacks"]) == (2, 1, 1)
