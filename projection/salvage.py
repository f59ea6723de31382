"""Reading a task record another producer wrote with a ``provider_config`` this system refuses.

Our producers cannot write ``NaN``, ``Infinity`` or a number beyond a double into
``provider_config`` (schemas/task_params.py refuses them), but the Avro field is JSON text and a
producer in another language can. Such a record breaks the contract, yet dropping it would lose
the task's params and webhook from the read model. The projector stores it instead with each
such number as null (``salvage_task``); the worker still refuses the task (INVALID_INPUT).
"""

from __future__ import annotations

import json
import math
from typing import Any

from schemas.codec import EventCodec
from schemas.errors import DecodeError
from schemas.events import TASK_SUBMITTED_MODELS, TaskSubmitted

_MODELS = {m.avro_name: m for m in TASK_SUBMITTED_MODELS.values()}


def _finite_or_none(literal: str) -> float | None:
    value = float(literal)
    return value if math.isfinite(value) else None


def _sanitised(text: Any) -> Any:
    """JSON text with every non-finite number made null; anything else as it is."""
    if not isinstance(text, str):
        return text
    try:
        return json.dumps(json.loads(text, parse_constant=lambda _: None,
                                     parse_float=_finite_or_none))
    except ValueError:
        return text


def salvage_task(codec: EventCodec, data: bytes, error: DecodeError) -> TaskSubmitted:
    """The TaskSubmitted of ``data`` with its provider_config sanitised; raises ``error`` (the
    original decode error) when that is not what was wrong."""
    name, record = codec.decode_dict(data)
    model = _MODELS.get(name)
    params = record.get("params")
    if model is None or not isinstance(params, dict) or not isinstance(params.get("provider_config"), str):
        raise error
    params["provider_config"] = _sanitised(params["provider_config"])
    try:
        return model.from_avro(record)
    except ValueError:
        raise error from None
