"""Test-only handlers for the supervised worker: they run in the worker's handler process, so
they are module-level classes (pickled by reference) and report through their result only.

The task's ``prompt`` says what to do: ``ok`` (a 1x1 PNG, the process id as ``text``);
``ignore:<s>`` (sleeps ``s`` seconds without ever looking at its cancel token); ``alloc:<mb>``
(allocates and touches 16 MiB blocks, up to ``mb`` MiB in all: the test bounds it);
``abort`` (``os.abort()``: the process dies as a C++ ``terminate`` makes it die);
``progress:<n>:<s>`` (``n`` progress reports, 1/n to 1, evenly over ``s`` seconds).
"""

from __future__ import annotations

import os
import time
from typing import Any

from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from schemas.enums import TaskType
from tests.gpu_consumers.runtime_helpers import PNG

_BLOCK = 16 * 2**20


class Runaway:
    task_type = TaskType.IMAGE_ADJUSTER
    providers = ("test",)

    def run(self, params: Any, ctx: TaskContext) -> HandlerResult:
        verb, *args = params.prompt.split(":")
        ctx.progress(0.5)  # "under way", for tests that wait for the handler to start
        if verb == "ignore":
            end = time.monotonic() + float(args[0])
            while time.monotonic() < end:
                time.sleep(0.05)  # no cancel check: only a kill stops this
        elif verb == "alloc":
            blocks = []
            for _ in range(int(args[0]) * 2**20 // _BLOCK):
                blocks.append(b"\x01" * _BLOCK)  # written, so resident
                time.sleep(0.05)
        elif verb == "abort":
            os.abort()
        elif verb == "progress":
            n, seconds = int(args[0]), float(args[1])
            for k in range(1, n + 1):
                time.sleep(seconds / n)
                ctx.progress(k / n)
        return HandlerResult(outputs=[OutputFile(PNG, "image/png", ".png")], model="runaway",
                             provider="test", width=1, height=1, text=str(os.getpid()))
