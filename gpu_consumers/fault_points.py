"""Fault injection for the fault suite (bench/faults.py, docs/RELIABILITY.md): a worker that dies
at a chosen point of a task, as a power cut or an OOM kill would stop it.

``fault_point(name)`` SIGKILLs this process when ``WORKER_FAULT_POINT`` names ``name`` (after
``WORKER_FAULT_AFTER`` earlier passes through that point, 0 by default); otherwise it does nothing.
The environment is read once, at import: an unset variable costs one string comparison per call.

The points (one-line calls in the worker):

- ``before_processing``: a task taken from its partition, before its PROCESSING status;
- ``mid_run``: the handler started (its PROCESSING emitted), before it returns;
- ``after_store``: the outputs stored, before the COMPLETED status;
- ``after_terminal``: the terminal status acknowledged by the broker, before the offset commit;
- ``during_commit``: the offset commit asked for (sent, or held for the next request by the
  commit spacing of ``gpu_consumers.offsets``), before the broker answered it.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("before_processing", "mid_run", "after_store", "after_terminal", "during_commit")

_ARMED = os.environ.get("WORKER_FAULT_POINT") or None
_remaining = int(os.environ.get("WORKER_FAULT_AFTER") or 0)
_lock = threading.Lock()

if _ARMED is not None and _ARMED not in POINTS:
    raise ValueError(f"WORKER_FAULT_POINT={_ARMED!r} is none of {', '.join(POINTS)}")


def fault_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point and its countdown has run out."""
    global _remaining
    if name != _ARMED:
        return
    with _lock:
        if _remaining > 0:
            _remaining -= 1
            return
    os.kill(os.getpid(), signal.SIGKILL)
