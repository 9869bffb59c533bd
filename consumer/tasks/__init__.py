"""Scoring tasks by name, and the per-process cache of loaded tasks."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from consumer.models import ModelCache
from consumer.tasks.base import ScoringTask, TaskContext
from consumer.tasks.custom import is_custom, load_task_class
from workpool.errors import MessageError
from workpool.settings import Settings

__all__ = ["BUILTIN_TASKS", "ScoringTask", "TaskCache", "TaskContext", "task_class"]

BUILTIN_TASKS = ("classification", "cloth_recognition")


def task_class(name: str, allowed_modules: Sequence[str] = ("consumer.tasks",)) -> type[ScoringTask]:
    """The class for a message's `task`: a built-in name or `package.module:ClassName` from one of
    `allowed_modules` (see `consumer.tasks.custom`)."""
    if name == "classification":
        from consumer.tasks.classification import Classification

        return Classification
    if name == "cloth_recognition":
        from consumer.tasks.cloth import ClothRecognition

        return ClothRecognition
    if is_custom(name):
        return load_task_class(name, allowed_modules)
    raise MessageError(f"unknown task {name!r}: expected {', '.join(BUILTIN_TASKS)} or package.module:ClassName")


class TaskCache:
    """Loaded tasks keyed by (task, model, labels); models are shared through one ModelCache.

    The least recently used are dropped beyond `max_tasks`, so a consumer serving run after run
    with different models does not keep every model it ever loaded in memory.
    """

    def __init__(self, settings: Settings, max_tasks: int = 4) -> None:
        self.context = TaskContext(settings, ModelCache(settings, max_models=max_tasks))
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[tuple[str, str | None, str | None], ScoringTask] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, task: str, model: str | None, labels: str | None) -> ScoringTask:
        key = (task, model, labels)
        with self._lock:
            if key not in self._tasks:
                self._tasks[key] = task_class(task, self.context.settings.allowed_task_modules).load(
                    self.context, model, labels
                )
                while len(self._tasks) > self.max_tasks:
                    self._tasks.popitem(last=False)
            self._tasks.move_to_end(key)
            return self._tasks[key]
