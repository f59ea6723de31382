"""The rules a task record's key and headers must follow, checked by every consumer of task topics.

A task record names its task twice (the key and ``envelope.task_id``) and, when it carries
CloudEvents headers, its event and type twice more (``ce_id`` / ``envelope.event_id``,
``ce_type`` / the Avro record's name). Routing goes by the key (the partition, the processors'
tables) and reporting by the envelope (the statuses), so a record whose copies disagree would be
routed as one task and reported as another. The rule (docs/WIRE_FORMAT.md, "Key and headers"):

* the key MUST equal ``envelope.task_id`` (as UTF-8 text of the UUID);
* the CloudEvents headers are OPTIONAL: a record without them is accepted (the envelope is
  authoritative, and kcat or a plain client may write none); but a ``ce_id`` that is present must
  equal ``envelope.event_id``, and a ``ce_type`` that is present must name the record's type
  for its topic (``compute.events.<Type>TaskSubmitted``);
* ``traceparent`` is optional too; a malformed one is ignored (the task's statuses then use the
  trace derived from the task id, ``schemas.headers.task_trace_id``).

A record that breaks a rule is refused: dead-lettered with a FAILED/INVALID_INPUT status keyed
by ``envelope.task_id`` whose message names both values (the workers), and not kept for retries
(the processors). :func:`check_task_record` is pure, so both consumers share one judgement.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.errors import DecodeError


class RecordRuleError(DecodeError):
    """A task record whose key or CloudEvents headers disagree with its envelope: refused
    (dead-lettered, its task FAILED with INVALID_INPUT). Fix the writer: the key and the
    ``ce_id`` / ``ce_type`` headers must repeat the envelope (docs/WIRE_FORMAT.md)."""


def check_task_record(key: bytes | None, headers: Mapping[str, str], *, task_id: str,
                      event_id: str, avro_name: str) -> RecordRuleError | None:
    """The first rule the record breaks, or None. ``headers``: the record's headers as text
    (``schemas.headers.header_dict``); ``task_id``, ``event_id``: its envelope's; ``avro_name``:
    the full name of the record type its topic holds."""
    key_text = key.decode("utf-8", "replace") if key is not None else None
    if key_text != task_id:
        shown = "no key" if key_text is None else f"key {key_text!r}"
        return RecordRuleError(f"the record's {shown} is not its envelope.task_id {task_id!r}: "
                               "the key must be the task id")
    ce_id = headers.get("ce_id")
    if ce_id is not None and ce_id != event_id:
        return RecordRuleError(f"header ce_id {ce_id!r} is not the envelope.event_id {event_id!r} "
                               "of task " + task_id)
    ce_type = headers.get("ce_type")
    if ce_type is not None and ce_type != avro_name:
        return RecordRuleError(f"header ce_type {ce_type!r} is not {avro_name!r}, the record type "
                               f"of this topic (task {task_id})")
    return None
