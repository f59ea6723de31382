"""The handler process reports progress only as often as the parent can use it (issue 19).

Each report is a pipe write that wakes the worker, on the CPUs the handler runs on, and the worker
emits at most one PROCESSING progress event per ``progress_interval_s``: so the child reports at
twice that rate and no faster, and a quick task's reports (all inside the first interval, which
the parent would drop) are never sent. A real handler process, no broker.
"""

from __future__ import annotations

import functools
import time
import uuid

import pytest

from gpu_consumers.control import ReasonToken
from gpu_consumers.supervisor import ChildKit, Supervisor
from schemas.enums import TaskType
from schemas.events import Envelope, ImageAdjusterTaskSubmitted
from schemas.task_params import PARAMS_MODELS
from tests.gpu_consumers.runaway import Runaway

TYPE = TaskType.IMAGE_ADJUSTER


def _task(prompt: str) -> ImageAdjusterTaskSubmitted:
    params = PARAMS_MODELS[TYPE](base_image_url="file:///nowhere.png", prompt=prompt)
    return ImageAdjusterTaskSubmitted(envelope=Envelope.new(str(uuid.uuid4()), TYPE, "producer"),
                                      params=params)


@pytest.fixture
def run_with():
    supervisors: list[Supervisor] = []

    def run(progress_interval_s: float, prompt: str) -> tuple[list[float], float]:
        supervisor = Supervisor(functools.partial(ChildKit, {TYPE: {"test": Runaway}}),
                                timeout_grace_s=1.0, cancel_grace_s=1.0, max_rss_bytes=0,
                                start_timeout_s=120.0, progress_interval_s=progress_interval_s)
        supervisors.append(supervisor)
        supervisor.ready()  # the child's start is not the task's time
        reports: list[float] = []
        started = time.monotonic()
        result = supervisor.run(_task(prompt), 1, False, ReasonToken(), reports.append)
        assert result.model == "runaway"
        return reports, time.monotonic() - started

    yield run
    for supervisor in supervisors:
        supervisor.close()


def test_every_report_reaches_the_parent_when_every_one_is_an_event(run_with) -> None:
    reports, _ = run_with(0.0, "progress:50:0")
    assert reports == [0.5, *(k / 50 for k in range(1, 51))]


def test_a_quick_tasks_reports_are_not_sent(run_with) -> None:
    # 200 reports in no time; the parent would emit none of them within its 10 s interval.
    reports, _ = run_with(10.0, "progress:200:0")
    assert reports == []


def test_a_long_tasks_reports_come_at_twice_the_parents_rate(run_with) -> None:
    # 100 reports over a second; the child sends one per 0.1 s at most (interval 0.2 s / 2).
    reports, elapsed = run_with(0.2, "progress:100:1")
    assert 1 <= len(reports) <= elapsed / 0.1 + 1
    assert reports == sorted(reports) and reports[-1] <= 1.0
