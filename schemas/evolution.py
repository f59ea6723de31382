"""The schema evolution rule, as code (docs/SCHEMA_EVOLUTION.md explains it).

Our contracts are FULL-compatible: every new version must read data written with the old one
(backward) and every old reader must read data written with the new one (forward). For Avro
records that means:

* a field may be added only with a default (old data lacks it; readers fill the default);
* a field may be removed only if it had a default (old readers fill it in when reading new data);
* a field's type never changes (add a new field instead);
* enum symbols may only be added at the end, and only on enums that declare a ``default``
  (old readers map an unknown symbol to it) — our enums have none, so they are frozen;
* names and namespaces never change (aliases are not used).

Released versions are frozen in ``schemas/avro/history/`` and the tests hold every current
schema to this rule against them.
"""

from __future__ import annotations

from typing import Any

_NAMED = ("record", "enum", "fixed")


def full_compatibility_problems(old: Any, new: Any) -> list[str]:
    """Reasons why ``new`` is not FULL-compatible with ``old`` (empty list: compatible)."""
    return _compare(_inline_named(old), _inline_named(new), "")


def _inline_named(schema: Any, defined: dict[str, Any] | None = None) -> Any:
    """Replace references to named types by their definitions, so that where a type happens to
    be defined first (which moves when fields are added) does not matter."""
    defined = {} if defined is None else defined
    if isinstance(schema, str):
        return defined.get(schema, schema)
    if isinstance(schema, list):
        return [_inline_named(s, defined) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("type") in _NAMED:
        defined[out["name"]] = out
    if out.get("type") == "record":
        out["fields"] = [{**f, "type": _inline_named(f["type"], defined)} for f in out["fields"]]
    elif out.get("type") == "array":
        out["items"] = _inline_named(out["items"], defined)
    elif out.get("type") == "map":
        out["values"] = _inline_named(out["values"], defined)
    return out


def _compare(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and old.get("type") in _NAMED:
        if not (isinstance(new, dict) and new.get("type") == old["type"]):
            return [f"{path or old['name']}: {old['type']} changed to {_kind(new)}"]
        if old["name"] != new["name"]:
            return [f"{path}: renamed {old['name']} -> {new['name']}"]
        if old["type"] == "enum":
            if old["symbols"] != new["symbols"]:
                return [f"{path or old['name']}: enum symbols changed (enums are frozen)"]
            return []
        if old["type"] == "fixed":
            return [] if old["size"] == new["size"] else [f"{path}: fixed size changed"]
        return _record_problems(old, new, path or old["name"])
    if isinstance(old, list) or isinstance(new, list):
        if not (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)):
            return [f"{path}: union changed from {_kind(old)} to {_kind(new)}"]
        problems: list[str] = []
        for i, (o, n) in enumerate(zip(old, new)):
            problems += _compare(o, n, f"{path}[{i}]")
        return problems
    if isinstance(old, dict) and old.get("type") in ("array", "map"):
        key = "items" if old["type"] == "array" else "values"
        if not (isinstance(new, dict) and new.get("type") == old["type"]):
            return [f"{path}: {old['type']} changed to {_kind(new)}"]
        return _compare(old[key], new[key], f"{path}.{key}")
    if _kind(old) != _kind(new):
        return [f"{path}: type changed from {_kind(old)} to {_kind(new)}"]
    return []


def _record_problems(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    old_fields = {f["name"]: f for f in old["fields"]}
    new_fields = {f["name"]: f for f in new["fields"]}
    for name, field in new_fields.items():
        if name not in old_fields and "default" not in field:
            problems.append(f"{path}.{name}: added without a default (old data cannot be read)")
    for name, field in old_fields.items():
        if name not in new_fields:
            if "default" not in field:
                problems.append(f"{path}.{name}: removed but had no default (old readers break)")
            continue
        problems += _compare(field["type"], new_fields[name]["type"], f"{path}.{name}")
    return problems


def _kind(schema: Any) -> str:
    if isinstance(schema, dict):
        kind = schema.get("type")
        logical = schema.get("logicalType")
        base = schema.get("name") if kind in _NAMED else kind
        return f"{base}({logical})" if logical else str(base)
    if isinstance(schema, list):
        return "union[" + ",".join(_kind(s) for s in schema) + "]"
    return str(schema)
