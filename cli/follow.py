"""Client side of GET /tasks/{id}/events: follow a task, reconnecting with Last-Event-ID.

Used by ``computectl status --follow`` (a rich progress bar) and usable from any script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

# Reconnect after a dropped stream at most this many times in a row, this long apart.
MAX_RECONNECTS, RECONNECT_DELAY_S = 10, 1.0


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Frames of a text/event-stream: ``{"id", "event", "data"}``; comments are dropped."""
    frame: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if frame:
                if "data" in frame:
                    frame["data"] = json.loads(frame["data"])
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            frame[name] = value[1:] if value.startswith(" ") else value


def iter_events(client: httpx.Client, task_id: str,
                last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every frame of the task's stream, resuming after drops without gaps or repeats; ends
    after the server's ``end`` frame."""
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            with client.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise RuntimeError(f"{resp.status_code}: {resp.text[:200]}")
                for frame in parse_sse(resp.iter_lines()):
                    failures = 0
                    if "id" in frame:
                        last_event_id = frame["id"]
                    yield frame
                    if frame.get("event") == "end":
                        return
        except httpx.TransportError:
            failures += 1
            if failures > MAX_RECONNECTS:
                raise
            time.sleep(RECONNECT_DELAY_S)  # then resume after last_event_id


def follow_events(client: httpx.Client, task_id: str, *, quiet: bool = False,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> str | None:
    """Follow until the task ends; show a progress bar unless ``quiet``. Returns the final
    status from the ``end`` frame."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    final: str | None = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), disable=quiet, transient=False) as bar:
        row = bar.add_task(f"{task_id[:8]} PENDING", total=1.0)
        for frame in iter_events(client, task_id):
            data = frame.get("data") or {}
            if on_event is not None:
                on_event(frame)
            if frame.get("event") == "end":
                final = data.get("status")
                break
            label = f"{task_id[:8]} {data.get('status')} (attempt {data.get('attempt')})"
            progress = data.get("progress")
            if data.get("status") == "COMPLETED":
                progress = 1.0
            bar.update(row, description=label,
                       **({"completed": progress} if progress is not None else {}))
    return final
