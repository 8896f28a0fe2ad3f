"""Evaluating a run's subnet again, on its own data or other data (``--set task.data_dir=...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from das_tune.artifacts.run_folder import read_run_folder
from das_tune.errors import UserError
from das_tune.subnet.load import load_run
from das_tune.training import loop
from das_tune.training.components import build_spec_task

SPLITS = ("val", "test")


class Evaluation(BaseModel):
    split: str
    metric: str
    value: float
    metrics: dict[str, float]  # everything the task reports (the metric, the loss, ...)
    examples: int
    recorded: float | None  # the run's own figure for this split (metrics.json), for comparison


def evaluate(path: str | Path, split: str = "test", overrides: dict[str, Any] | None = None) -> Evaluation:
    """The metric of the run folder's subnet on ``split``, batched as its retrain evaluated."""
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    run = read_run_folder(path, overrides)
    task = build_spec_task(run.spec)
    model = load_run(run, task)
    metrics = loop.evaluate(model.backbone, task, split, run.spec.retrain.batch_size)
    recorded = run.metrics.value if split == "test" else run.metrics.val.get(task.metric)
    return Evaluation(
        split=split, metric=task.metric, value=metrics[task.metric], metrics=metrics,
        examples=len(task.examples(split)), recorded=recorded,
    )
