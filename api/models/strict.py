"""Strict JSON scalars for request bodies: ``"0.5"`` is not a number and ``true`` is not 1.

pydantic's lax mode would coerce them, so a client's typo passed silently and the OpenAPI
document (``"type": "number"``) did not say what the API accepted. ``ConfigDict(strict=True)``
cannot be used on a whole body: FastAPI validates the parsed JSON in Python mode, where strict
also refuses the text of an enum, a UUID or a date-time. So only the numbers and booleans are
made strict here (a JSON integer still fills a ``float``, as JSON Schema's ``number`` allows),
in the body model and in the models nested in it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

_SCALARS = (int, float, bool)
_strict_models: dict[type[BaseModel], type[BaseModel]] = {}


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold: Annotated and Optional unwrapped, unions split."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _with_strict_models(annotation: Any) -> Any:
    """``annotation`` with each model in it (also in a list or an Optional) made strict."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        return Annotated[(_with_strict_models(inner), *metadata)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_with_strict_models(a) for a in typing.get_args(annotation))]  # noqa: UP007 (built at run time)
    if origin is list:
        return list[_with_strict_models(typing.get_args(annotation)[0])]  # type: ignore[misc]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return strict_model(annotation)
    return annotation


def strict_fields(model: type[BaseModel]) -> dict[str, Any]:
    """``create_model`` field definitions of ``model`` whose scalars are strict (only the fields
    that change; their constraints, defaults and descriptions kept)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        members = [m for m in _members(info.annotation) if m is not type(None)]
        if members and all(m in _SCALARS for m in members):
            fields[name] = (info.annotation, FieldInfo.merge_field_infos(info, Field(strict=True)))
            continue
        nested = _with_strict_models(info.annotation)
        if nested != info.annotation:
            fields[name] = (nested, FieldInfo.merge_field_infos(info))
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
