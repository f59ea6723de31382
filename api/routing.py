"""``ApiRoute``: every /api/v1 route authenticates before it reads a body, and reads JSON strictly.

FastAPI parses a JSON body before it solves any dependency, so a malformed body sent without a
key was answered 400 where the caller first needs to hear 401. A route of this class whose
dependencies include the caller (``CallerDep``) authenticates first; the dependency then takes
the caller this class found (one key check per request).

Python's ``json`` accepts what JSON and the rest of the system do not: ``NaN``, ``Infinity``,
numbers beyond a double (``1e400`` becomes infinity), lone surrogates (``"\\udfff"``, text no
UTF-8 writer can encode) and U+0000 (text PostgreSQL cannot store). Each is refused here with
422 naming the field, before any model sees the value, so nothing half-valid reaches Kafka or
the read model. A body that is not UTF-8 is malformed JSON (400).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.deps import authenticate, get_caller

# Integral JSON numbers up to this size are read as ints (beyond it, they are out of every range).
_EXACT_INTEGRAL = 2.0**64


class _NonFinite:
    """What the parser returns in place of a number JSON cannot carry (found by :func:`_problems`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text



def _problems(value: Any, loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """Every non-finite number, lone surrogate and NUL in a parsed body, with where it is."""
    if isinstance(value, str):
        if "\x00" in value:
            return [{"type": "string_nul", "loc": loc, "input": value[:80],
                     "msg": "must not contain U+0000 (NUL)"}]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [{"type": "string_unicode", "loc": loc, "input": value[:80].encode(
                        "utf-8", "backslashreplace").decode(),
                     "msg": "must be valid Unicode text (it holds a lone surrogate)"}]
        return []
    if isinstance(value, _NonFinite):
        return [{"type": "finite_number", "loc": loc, "input": value.text,
                 "msg": f"must be a finite number that fits a double (got {value.text})"}]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _problems(k, loc) + _problems(v, (*loc, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _problems(v, (*loc, i))]
    return []


def parse_json(body: bytes) -> Any:
    """The body as JSON; RequestValidationError for malformed JSON (400) or a value the system
    cannot carry (422, naming the field)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(exc.start, "the body is not UTF-8") from None
    non_finite: list[_NonFinite] = []

    def number(literal: str) -> int | float | _NonFinite:
        value = float(literal)
        if math.isfinite(value):
            # 3.0 is the integer 3 in JSON Schema ("type": "integer" in the OpenAPI document),
            # so it fills an int field as 3 does; read exactly (bounded: no 1e999999 integers).
            if value.is_integer() and abs(value) <= _EXACT_INTEGRAL:
                return int(Decimal(literal))
            return value
        non_finite.append(_NonFinite(literal))
        return non_finite[-1]

    def constant(literal: str) -> _NonFinite:  # NaN, Infinity, -Infinity
        non_finite.append(_NonFinite(literal))
        return non_finite[-1]

    try:
        value = json.JSONDecoder(parse_float=number, parse_constant=constant).decode(text)
        # Surrogates and NUL only come as \u escapes (raw control characters are not JSON and
        # the text is valid UTF-8), non-finite numbers through the hooks: most bodies skip this.
        problems = _problems(value, ("body",)) if non_finite or "\\u" in text else []
    except json.JSONDecodeError as exc:
        raise _malformed(exc.pos, f"JSON decode error: {exc.msg}") from None
    except RecursionError:
        raise _malformed(0, "the body is nested too deeply") from None
    except ValueError as exc:  # an integer literal beyond Python's digit limit
        raise _malformed(0, str(exc)) from None
    if problems:
        raise RequestValidationError(problems)
    return value


def _malformed(pos: int, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "json_invalid", "loc": ("body", pos), "msg": msg,
                                    "input": {}}])


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without a content type as JSON too
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("application/") and (media.endswith("/json") or media.endswith("+json"))


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is get_caller or _needs_key(d) for d in dependant.dependencies)


class ApiRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_key = _needs_key(self.dependant)
        reads_body = self.body_field is not None

        async def route(request: Request) -> Response:
            if needs_key:
                await authenticate(request)
            if reads_body and _is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    # Starlette's Request keeps the parsed body: FastAPI's json() returns this.
                    request._json = parse_json(body)
            return await handler(request)

        return route
