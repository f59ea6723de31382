"""Which handler classes serve which task type and ``provider_type``.

Each task type has one module, ``gpu_consumers/handlers/<type slug>.py``. Every class defined
there with the :class:`~gpu_consumers.handlers.base.Handler` shape (``task_type``, ``providers``,
``run``) serves each provider name in its ``providers``. The *default* provider of a type (used
when a task leaves ``provider_type`` unset) is the module's ``DEFAULT_PROVIDER`` if it sets one,
else the first model-backed provider (``diffusers``, ``transformers``...), else ``classical``:
classical methods are the weight-free fallback, a real deployment runs the models.

Only the modules of the requested types are imported (a model module pulls in torch and
diffusers, which takes seconds); a type whose module does not exist yet is left out, and the
worker refuses to serve a type that has no handler.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import Handler
from schemas.enums import TaskType

__all__ = ["CLASSICAL", "HandlerFactory", "HandlerSet", "Providers", "handler_classes", "registry"]

CLASSICAL = "classical"
HandlerFactory = Callable[[], Handler]
Providers = Mapping[str, HandlerFactory]  # provider_type -> factory; the first is the default
_PACKAGE = "gpu_consumers.handlers"


def _module_for(task_type: TaskType) -> ModuleType | None:
    name = f"{_PACKAGE}.{task_type.slug}"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)  # a broken module raises: that is a bug to see


def handler_classes(module: ModuleType, task_type: TaskType) -> list[type]:
    """The handler classes a module defines for ``task_type``, in source order."""
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and getattr(cls, "task_type", None) is task_type
        and isinstance(getattr(cls, "providers", None), tuple)
        and callable(getattr(cls, "run", None))
    ]
    return sorted(found, key=_line_of)


def _line_of(cls: type) -> int:
    try:
        return inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):  # no source (a compiled or generated class): last
        return 1 << 30


def _providers(module: ModuleType, task_type: TaskType) -> dict[str, HandlerFactory]:
    by_name: dict[str, HandlerFactory] = {}
    for cls in handler_classes(module, task_type):
        for name in cls.providers:
            by_name.setdefault(name, cls)
    default = getattr(module, "DEFAULT_PROVIDER", None)
    order = sorted(by_name, key=lambda name: (name != default, name == CLASSICAL))
    return {name: by_name[name] for name in order}


def registry(
    types: Iterable[TaskType] | None = None,
) -> dict[TaskType, dict[str, HandlerFactory]]:
    """``{task type: {provider name: handler class}}`` for the handler modules that exist; the
    first provider of each type is its default."""
    out: dict[TaskType, dict[str, HandlerFactory]] = {}
    for task_type in types if types is not None else TaskType:
        module = _module_for(task_type)
        if module is None:
            continue
        providers = _providers(module, task_type)
        if providers:
            out[task_type] = providers
    return out


class HandlerSet:
    """The handlers a worker serves: per task type, either one factory or ``{provider_type:
    factory}`` (the first is the default). Each factory is called once, on first use, and its
    handler stays warm for the worker's lifetime."""

    def __init__(self, handlers: Mapping[TaskType, HandlerFactory | Providers]) -> None:
        self._providers = {t: dict(p) if isinstance(p, Mapping) else {"default": p}
                           for t, p in handlers.items()}
        self._instances: dict[Any, Handler] = {}
        self._lock = threading.Lock()

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._providers

    def for_task(self, task: Any) -> Handler:
        """The handler for a task's type and ``provider_type``; InvalidInput if there is none."""
        task_type = task.envelope.task_type
        providers = self._providers.get(task_type, {})
        name = getattr(task.params, "provider_type", None) or next(iter(providers), None)
        factory = providers.get(name) if name else None
        if factory is None:
            raise InvalidInput(f"provider_type {name!r} is not available for {task_type.value} "
                               f"here; available: {', '.join(providers) or 'none'}")
        with self._lock:  # a factory may load models: once, even if two threads ask
            if factory not in self._instances:
                self._instances[factory] = factory()
            return self._instances[factory]
