"""Values as PostgreSQL can store them.

``text`` and ``jsonb`` cannot hold U+0000 (jsonb refuses the ``\\u0000`` escape: "unsupported
Unicode escape sequence"), but events may carry it: a model's output text is whatever the model
wrote. The read model keeps such values with each NUL replaced by U+FFFD (the replacement
character): what is on the topics stays exact, and one odd character can no longer stop a
projection batch (it did: a tiny random LLM's answer in the demo).
"""

from __future__ import annotations

import json
from typing import Any

from psycopg.types.json import Jsonb

_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def without_nul(value: Any) -> Any:
    """``value`` with every NUL in its text (strings, dict keys and values, list items, nested)
    replaced by U+FFFD; other values as they are."""
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nul(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    text = json.dumps(value)
    # json.dumps writes a NUL as the escape \u0000; only then is the value walked (rarely).
    return json.dumps(without_nul(value)) if "\\u0000" in text else text


def jsonb(value: Any) -> Jsonb:
    """``Jsonb(value)`` that PostgreSQL accepts whatever text ``value`` holds."""
    return Jsonb(value, dumps=_dumps)
