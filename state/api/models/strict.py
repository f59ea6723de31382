"""Strict JSON scalars for request bodies: ``"0.5"`` is not a number and ``true`` is not 1.

pydantic's lax mode would coerce them, so a client's typo passed silently and the OpenAPI
document (``"type": "number"``) did not say what the API accepted. ``ConfigDict(strict=True)``
cannot be used on a whole body: FastAPI validates the parsed JSON in Python mode, where strict
also refuses the text of an enum, a UUID or a date-time. So only the numbers and booleans are
made strict here (a JSON integer still fills a ``float``, as JSON Schema's ``number`` allows),
in the body model and in the models nested in it.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, Strict, create_model

_SCALARS = (int, float, bool)
_strict_models: dict[type[BaseModel], type[BaseModel]] = {}


def strict_annotation(annotation: Any) -> Any:
    """``annotation`` with every int, float and bool in it strict (nested models included)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        return Annotated[(strict_annotation(inner), *metadata)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(strict_annotation(a) for a in typing.get_args(annotation))]
    if origin is list:
        return list[strict_annotation(typing.get_args(annotation)[0])]  # type: ignore[misc]
    if annotation in _SCALARS:
        return Annotated[annotation, Strict()]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return strict_model(annotation)
    return annotation


def strict_fields(model: type[BaseModel]) -> dict[str, Any]:
    """``create_model`` field definitions of ``model`` whose scalars are strict (only the fields
    that change)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        strict = strict_annotation(info.annotation)
        if strict != info.annotation:
            changed = copy.copy(info)
            changed.annotation = strict
            fields[name] = (strict, changed)
    return fields


def strict_model(model: type[BaseModel]) -> type[BaseModel]:
    """A subclass of ``model`` (same name, validators and rules) with strict scalars; ``model``
    itself when it has none."""
    strict = _strict_models.get(model)
    if strict is None:
        fields = strict_fields(model)
        strict = _strict_models[model] = (
            create_model(model.__name__, __base__=model, __module__=model.__module__, **fields)
            if fields else model)
    return strict
