"""Provider routing: per task type, a primary provider and an optional fallback.

A *provider* here is one configured way to run a task type: a handler implementation
(``provider_type``: ``diffusers``, ``classical``...), the defaults it gets under the task's own
``provider_config``, the models it loads (role -> hub id or folder, production profile) and its
*capabilities* (maximum width, height, pixels, frames). A deployment configures them per type
(``WORKER_PROVIDERS`` / ``WORKER_PROVIDERS_FILE``, docs/WORKERS.md "Provider fallback"); a type
without a route runs as it always did.

The rules, all decided in the worker process (the parent decides every status):

* a task the primary cannot take (over one of its capabilities) runs on the fallback
  (``fallback_reason`` ``capability``); over both, or over the primary with no fallback, it is
  FAILED/INVALID_INPUT naming each limit;
* a task that fails on the primary with PROVIDER_ERROR, PROVIDER_TIMEOUT or a GPU out of memory
  (after its ``low_memory`` retry) runs at once on the fallback, *within the same attempt*: no
  FAILED event, no backoff, no new attempt number. The attempt's retry budget is spent only when
  the fallback fails too. A worker stop (a killed handler process) never falls back: the
  poison-task rule (``state.stops``) decides those;
* the result's metadata names the provider that produced it (``provider_name``) and why the
  fallback did (``fallback_reason``); :class:`ProviderRouter` counts fallbacks by task type and
  reason (Prometheus ``compute_worker_provider_fallbacks_total``).

How the choice reaches the handler (which may run in the supervised child process): the task is
copied with ``provider_type`` set to ``route:<provider name>`` and the provider's
``provider_config`` defaults merged under the task's; the handler set built with
:func:`with_provider_handlers` maps that name to a :class:`RoutedHandler`, which runs the
implementation's handler with the real ``provider_type`` and the provider's own model cache.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gpu_consumers.errors import InvalidInput, TaskFailure
from schemas.enums import ErrorCode, TaskType

if TYPE_CHECKING:
    from gpu_consumers.handlers.base import HandlerResult, TaskContext
    from gpu_consumers.model_cache import ModelCache
    from schemas.events import TaskResult, TaskSubmitted

log = logging.getLogger("gpu_consumers.worker")

ROUTE_PREFIX = "route:"  # provider_type of a routed task copy; refused in submitted tasks
CAPABILITY = "capability"
GPU_OUT_OF_MEMORY = "GPU_OUT_OF_MEMORY"
# Failures of the primary that the fallback may cure: the model or its runtime, not the task.
_FALLBACK_CODES = frozenset({ErrorCode.PROVIDER_ERROR, ErrorCode.PROVIDER_TIMEOUT})
# VIDEO_GENERATION's frame rate when the task leaves it unset (SVD's own default; the handler's
# DEFAULT_FPS, not imported: that module pulls in OpenCV and the model code).
_VIDEO_DEFAULT_FPS = 7


# --------------------------------------------------------------------------- configuration


class Capabilities(BaseModel):
    """What a provider can take; None: no limit. Checked against the sizes a task's parameters
    ask for (see :func:`task_size`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_width: int | None = Field(default=None, ge=1)
    max_height: int | None = Field(default=None, ge=1)
    max_pixels: int | None = Field(default=None, ge=1)
    max_frames: int | None = Field(default=None, ge=1)

    def refusal(self, size: TaskSize) -> str | None:
        """Why a task of ``size`` is over these capabilities, or None."""
        over = []
        if self.max_width and size.width and size.width > self.max_width:
            over.append(f"width {size.width} > max_width {self.max_width}")
        if self.max_height and size.height and size.height > self.max_height:
            over.append(f"height {size.height} > max_height {self.max_height}")
        if self.max_pixels and size.pixels and size.pixels > self.max_pixels:
            over.append(f"{size.width} x {size.height} = {size.pixels:,} pixels > max_pixels "
                        f"{self.max_pixels:,}")
        if self.max_frames and size.frames and size.frames > self.max_frames:
            over.append(f"{size.frames} frames > max_frames {self.max_frames}")
        return ", ".join(over) or None


class ProviderSpec(BaseModel):
    """One configured provider of a task type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Names the provider in results, metrics and logs, e.g. "sdxl-a100" or "classical-cpu".
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # The handler implementation (a provider_type of the type's module); None: its default.
    provider_type: str | None = None
    # Defaults under the task's own provider_config (the task's keys win); the handler's
    # whitelist still applies, so a key it does not know fails the task as INVALID_INPUT.
    provider_config: dict[str, Any] = Field(default_factory=dict)
    # Production profile: model role -> hub id or local folder (as COMPUTE_MODEL_<ROLE>), loaded
    # into this provider's own model cache. Empty: the worker's models.
    models: dict[str, str] = Field(default_factory=dict)
    capabilities: Capabilities = Field(default_factory=Capabilities)

    @field_validator("models")
    @classmethod
    def _known_roles(cls, models: dict[str, str]) -> dict[str, str]:
        from gpu_consumers.models import Role

        known = {role.value for role in Role}
        unknown = sorted(set(models) - known)
        if unknown:
            raise ValueError(f"unknown model role(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return models


class ProviderRoute(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    primary: ProviderSpec
    fallback: ProviderSpec | None = None

    def model_post_init(self, context: Any) -> None:
        if self.fallback is not None and self.fallback.name == self.primary.name:
            raise ValueError(f"primary and fallback are both named {self.primary.name!r}")


def _task_type_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k if isinstance(k, TaskType) else TaskType.parse(str(k)): v for k, v in value.items()}
    return value


ProviderRoutes = Annotated[dict[TaskType, ProviderRoute], BeforeValidator(_task_type_keys)]
"""Per task type (slug or name keys), its primary and fallback provider."""


def load_providers_file(path: Path) -> dict[str, Any]:
    """The routes of a YAML (or JSON) file: ``{type: {primary: {...}, fallback: {...}}}``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"WORKER_PROVIDERS_FILE={path}: cannot be read: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"WORKER_PROVIDERS_FILE={path}: expected a mapping of task types, "
                         f"got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class TaskSize:
    width: int | None = None
    height: int | None = None
    frames: int | None = None

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None


def task_size(task_type: TaskType, params: Any) -> TaskSize:
    """The output size a task's parameters ask for. Types sized by their input image (REFINE
    without targets, the enhancers, the background types) state none: only the frames of a video
    and explicit sizes are known before the input is fetched."""
    if task_type is TaskType.REFINE:
        return TaskSize(params.target_width, params.target_height)
    if task_type is TaskType.VIDEO_GENERATION:
        fps = params.fps or _VIDEO_DEFAULT_FPS
        return TaskSize(frames=round(fps * params.duration) if params.duration else None)
    return TaskSize(getattr(params, "width", None), getattr(params, "height", None))


@dataclass(frozen=True)
class Choice:
    spec: ProviderSpec
    fallback_reason: str | None = None  # None: the primary


def plan(task_type: TaskType, route: ProviderRoute, params: Any) -> list[Choice]:
    """The providers to try, in order: the primary (then the fallback, if a failure calls for
    it), or the fallback alone when the task is over the primary's capabilities. InvalidInput
    when no configured provider can take the task."""
    size = task_size(task_type, params)
    primary, fallback = route.primary, route.fallback
    over_primary = primary.capabilities.refusal(size)
    if over_primary is None:
        return [Choice(primary)] + ([Choice(fallback)] if fallback else [])
    if fallback is None:
        raise InvalidInput(f"{task_type.value} task is over the capabilities of provider "
                           f"{primary.name!r} ({over_primary}) and no fallback is configured")
    over_fallback = fallback.capabilities.refusal(size)
    if over_fallback is not None:
        raise InvalidInput(f"{task_type.value} task is over the capabilities of every provider: "
                           f"primary {primary.name!r} ({over_primary}), fallback "
                           f"{fallback.name!r} ({over_fallback})")
    return [Choice(fallback, CAPABILITY)]


def fallback_reason(failure: TaskFailure) -> str | None:
    """The reason a failure of the primary sends the task to the fallback, or None."""
    if getattr(failure, "stopped_worker", False):
        return None  # a killed handler process: the poison-task rule decides, not a fallback
    if getattr(failure, "out_of_memory", False):
        return GPU_OUT_OF_MEMORY
    return failure.code.value if failure.code in _FALLBACK_CODES else None


def routed_task(task: TaskSubmitted, spec: ProviderSpec) -> TaskSubmitted:
    """A copy of ``task`` for the handler set: ``provider_type`` names the route, the provider's
    ``provider_config`` defaults go under the task's own."""
    params = task.params
    config = {**spec.provider_config, **(params.provider_config or {})}
    update = {"provider_type": ROUTE_PREFIX + spec.name, "provider_config": config or None}
    return task.model_copy(update={"params": params.model_copy(update=update)})


class ProviderRouter:
    """The worker's routes, and the count of fallbacks (by task type and reason)."""

    def __init__(self, routes: Mapping[TaskType, ProviderRoute]) -> None:
        self.routes = dict(routes)
        self.metrics = CollectorRegistry()
        self._fallbacks = Counter(
            "compute_worker_provider_fallbacks", "Tasks run on their type's fallback provider, "
            "by task type and reason (capability, or the primary's error code).",
            ["task_type", "reason"], registry=self.metrics)
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}

    def plan(self, task: TaskSubmitted) -> list[Choice] | None:
        """The providers for ``task``; None when its type has no route or the task names its
        own ``provider_type`` (it asked for that implementation: run as today)."""
        named = getattr(task.params, "provider_type", None)
        if named and named.startswith(ROUTE_PREFIX):
            raise InvalidInput(f"provider_type {named!r}: the prefix {ROUTE_PREFIX!r} is reserved")
        route = self.routes.get(task.envelope.task_type)
        if route is None or named:
            return None
        return plan(task.envelope.task_type, route, task.params)

    def count(self, task_type: TaskType, reason: str) -> None:
        self._fallbacks.labels(task_type.slug, reason).inc()
        with self._lock:
            key = (task_type.slug, reason)
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def run(self, task: TaskSubmitted, choices: list[Choice],
            run_on: Callable[[TaskSubmitted], tuple[TaskResult, bool]]) -> tuple[TaskResult, bool]:
        """Run ``task`` on its providers in order (``run_on`` runs one routed copy and raises
        TaskFailure); stamp the result with the provider that produced it."""
        task_type = task.envelope.task_type
        first = choices[0]
        if first.fallback_reason is not None:
            self._note(task, first, "over the primary's capabilities")
        for index, choice in enumerate(choices):
            try:
                result, low_memory = run_on(routed_task(task, choice.spec))
            except TaskFailure as failure:
                reason = fallback_reason(failure)
                if reason is None or index + 1 >= len(choices):
                    if index > 0:  # say which provider failed last
                        failure.args = (f"fallback provider {choice.spec.name!r}: {failure}",)
                    raise
                choices[index + 1] = replace(choices[index + 1], fallback_reason=reason)
                self._note(task, choices[index + 1],
                           f"primary {choice.spec.name!r} failed: {failure}")
                continue
            metadata = result.metadata.model_copy(update={
                "provider_name": choice.spec.name, "fallback_reason": choice.fallback_reason})
            return result.model_copy(update={"metadata": metadata}), low_memory
        raise AssertionError(f"no provider was tried for {task_type.value}")  # choices is never empty

    def _note(self, task: TaskSubmitted, choice: Choice, why: str) -> None:
        assert choice.fallback_reason is not None
        self.count(task.envelope.task_type, choice.fallback_reason)
        log.warning("task %s: on fallback provider %r (%s)", task.envelope.task_id,
                    choice.spec.name, why, extra={"task_id": task.envelope.task_id})


# --------------------------------------------------------------------------- the handler side


def with_provider_handlers(handlers: Mapping[TaskType, Any],
                           routes: Mapping[TaskType, ProviderRoute]) -> dict[TaskType, Any]:
    """``handlers`` (type -> factory or {provider_type: factory}) plus, per routed type, one
    ``route:<name>`` entry per configured provider. A provider whose ``provider_type`` the type
    does not have is a configuration error (ValueError at start-up, not a failed task)."""
    out: dict[TaskType, Any] = dict(handlers)
    for task_type, route in routes.items():
        if task_type not in handlers:
            continue  # a route for a type this worker does not serve
        entry = handlers[task_type]
        providers = dict(entry) if isinstance(entry, Mapping) else {"default": entry}
        default = next(iter(providers))
        for spec in filter(None, (route.primary, route.fallback)):
            factory = providers.get(spec.provider_type or default)
            if factory is None:
                raise ValueError(f"provider {spec.name!r} of {task_type.slug}: provider_type "
                                 f"{spec.provider_type!r} does not exist; there are "
                                 f"{', '.join(providers)}")
            providers[ROUTE_PREFIX + spec.name] = functools.partial(RoutedHandler, factory, spec)
        out[task_type] = providers
    return out


class RoutedHandler:
    """Runs one provider: the implementation's handler, with the real ``provider_type`` and
    the provider's own models (a model cache of its own when it names models)."""

    def __init__(self, factory: Callable[[], Any], spec: ProviderSpec) -> None:
        self.spec = spec
        self.inner = factory()
        self._models: ModelCache | None = None
        self._lock = threading.Lock()

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
        params = params.model_copy(update={"provider_type": self.spec.provider_type})
        if self.spec.models:
            ctx = replace(ctx, models=self._cache(ctx))
        result: HandlerResult = self.inner.run(params, ctx)
        return result

    def _cache(self, ctx: TaskContext) -> ModelCache:
        from gpu_consumers.model_cache import ModelCache

        with self._lock:  # built once, on this provider's first task, and kept warm
            if self._models is None:
                base = ModelCache.for_context(ctx)
                self._models = ModelCache(registry_for(base.registry, self.spec), device=ctx.device)
            return self._models


def registry_for(base: Any, spec: ProviderSpec) -> Any:
    """The worker's model registry with ``spec.models`` in place of its roles' ids (production);
    the offline profile builds its tiny models whatever the ids, so it keeps the base."""
    from gpu_consumers.models import ModelProfile, ModelRegistry, Role

    if base.profile is not ModelProfile.PRODUCTION:
        return base
    roles = {Role(role): model for role, model in spec.models.items()}  # checked by ProviderSpec
    specs = {role: base.spec(role) for role in Role}
    specs.update({role: replace(specs[role], model_id=model) for role, model in roles.items()})
    return ModelRegistry(base.profile, base.cache_dir, specs=specs, lora_root=base.lora_root,
                         lora_allowed_repos=base.lora_allowed_repos)
