"""Downstream tasks by name: ``build_task("vqav2", data_dir=...)``."""

from __future__ import annotations

import inspect
from pathlib import Path

from das_tune.errors import UserError
from das_tune.tasks.base import Task
from das_tune.tasks.easyvqa import EasyVQATask
from das_tune.tasks.f30k import F30KTask
from das_tune.tasks.glue import MNLITask, SST2Task
from das_tune.tasks.nlvr2 import NLVR2Task
from das_tune.tasks.prompted import MNLIPromptTask, SST2PromptTask
from das_tune.tasks.scienceqa import ScienceQATask
from das_tune.tasks.synthetic import WRITERS, tiny_data_dir
from das_tune.tasks.vqav2 import VQAv2Task

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (VQAv2Task, NLVR2Task, F30KTask, MNLITask, SST2Task, EasyVQATask, ScienceQATask, SST2PromptTask, MNLIPromptTask)
}


def build_task(name: str, data_dir: str | Path | None = None, tiny: bool = False, **options) -> Task:
    """The task ``name`` reading ``data_dir``.

    ``tiny=True`` applies the task's small defaults (explicit options win) and, for the file-based
    tasks without a ``data_dir``, reads a synthetic dataset written in the real format.
    """
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    cls = TASKS[name]
    if tiny:
        options = {**cls.tiny_defaults, **options}
        if data_dir is None and name in WRITERS:
            data_dir = tiny_data_dir(name)
    accepted = [p for p in inspect.signature(cls).parameters if p != "data_dir"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"task {name!r} has no option(s) {', '.join(unknown)}; expected some of {', '.join(accepted)}"
        )
    for option, value in options.items():  # a split's size: a count, or None for all of it (never a slice from the end)
        if option.endswith("_limit") and value is not None and (type(value) is not int or value < 1):
            raise UserError(f"task.options.{option}: expected a whole number of examples ≥ 1 or null (all), got {value!r}")
    return cls(data_dir=data_dir, **options)


__all__ = ["TASKS", "Task", "build_task"]
