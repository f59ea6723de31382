"""Every topic name in one place.

One scheme: ``<prefix>.tasks.<type>``, ``<prefix>.tasks.status`` ... The prefix (default
``compute``) lets several deployments, or several tests, share one cluster without touching
each other's topics.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.enums import TaskType

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topics:
    prefix: str = "compute"

    def task(self, task_type: TaskType) -> str:
        """The per-type topic a worker group for ``task_type`` consumes."""
        return f"{self.prefix}.tasks.{task_type.slug}"

    @property
    def status(self) -> str:
        return f"{self.prefix}.tasks.status"

    @property
    def control(self) -> str:
        return f"{self.prefix}.tasks.control"

    @property
    def state(self) -> str:
        """Compacted: the latest folded state per task id."""
        return f"{self.prefix}.tasks.state"

    @property
    def evaluations(self) -> str:
        return f"{self.prefix}.evaluations"

    @property
    def generations(self) -> str:
        """Keyed by generation id: the requests (plans) and the final states of their tasks,
        which the processors' orchestrator folds into each generation's record."""
        return f"{self.prefix}.generations"

    @property
    def generations_state(self) -> str:
        """Compacted: the latest record of each generation (the orchestrator table's changelog)."""
        return f"{self.prefix}.generations.state"

    @property
    def workflows(self) -> str:
        """Keyed by workflow id: the requests (``WorkflowRequested``), the commands
        (``WorkflowCommandRequested``: start, pause, resume, cancel) and the final states of the
        steps' tasks, which the processors' workflow engine folds into each workflow's state."""
        return f"{self.prefix}.workflows"

    @property
    def workflows_state(self) -> str:
        """Compacted: the latest ``WorkflowState`` of each workflow (the engine table's changelog)."""
        return f"{self.prefix}.workflows.state"

    @property
    def schemas(self) -> str:
        """Compacted: every Avro schema a writer has used, keyed by its fingerprint."""
        return f"{self.prefix}.schemas"

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX

    def task_topics(self) -> list[str]:
        return [self.task(t) for t in TaskType]

    def all(self) -> list[str]:
        """Every topic the system uses, DLQs included (the state topics and the schemas topic
        have none: only our own processes write them)."""
        main = [*self.task_topics(), self.status, self.control, self.evaluations, self.generations,
                self.workflows]
        return [*main, *(self.dlq(t) for t in main), self.state, self.generations_state,
                self.workflows_state, self.schemas]

    def compacted(self) -> frozenset[str]:
        return frozenset({self.state, self.generations_state, self.workflows_state, self.schemas})

    def task_type_of(self, topic: str) -> TaskType | None:
        """Inverse of :meth:`task`; None for a topic that is not a task topic."""
        head = f"{self.prefix}.tasks."
        if not topic.startswith(head):
            return None
        try:
            return TaskType.parse(topic[len(head):])
        except ValueError:
            return None
