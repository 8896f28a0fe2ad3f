"""One Ray Tune trial, run in a worker: a subnet trained briefly from the shared warm-up state.

Every trial sees the same batches in the same order (those after the warm-up's), so trials differ
only in the layers they skip. The loss reported every ``ray.report_every`` steps is the mean loss on
the task's observation batches, with a checkpoint (model, optimizer, step) so that a retried trial
resumes where it stopped.

Every trial starts from the warm-up state the driver wrote to ``<experiment>/warmup_state.pt`` on
the experiment's storage (``ray.storage_path``: a folder, NFS, ``s3://`` …), so any node can run it;
each report carries the node it ran on (``node_id``, ``node_ip``), which the searcher records.

Fault injection (for tests and drills; arguments of the executor's ``RaySearch``, unset in a run):
the trials whose Optuna numbers are in ``fail_trials`` raise after each attempt's first report; with
a ``TrialHold``, a trial's first attempt on the hold's node writes ``FOLDER/trial<N>`` after its first
report and waits for ``FOLDER/release``, so that a test can kill that node at a known point.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray import tune

from das_tune.search.ray_cluster import current_node
from das_tune.spec.study import StudySpec
from das_tune.tasks.base import Batch
from das_tune.training import loop
from das_tune.training.components import Components, build_components

_STATE = "state.pt"
WARMUP_FILE = "warmup_state.pt"
HOLD_LIMIT_S = 600


@dataclass(frozen=True)
class TrialHold:
    """Hold the trials that start on node ``node_id`` after their first report (a test kills it then)."""

    node_id: str
    folder: str


class InjectedFailure(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _components(spec_json: str) -> tuple[Components, list[Batch]]:
    """Built once per worker: Ray reuses the worker for the next trial (``reuse_actors``)."""
    spec = StudySpec.model_validate_json(spec_json)
    parts = build_components(spec)
    parts.model.to("cuda" if torch.cuda.is_available() else "cpu")
    search = spec.search
    n = search.observation_batch_count
    batches = parts.task.observation_batches(parts.model, search.batch_size, n, split=search.observation.split)
    observations = list(itertools.islice(batches, n))
    return parts, observations


@functools.lru_cache(maxsize=1)
def _warmup_state(uri: str) -> dict[str, torch.Tensor]:
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as stream:
        return torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=False)


def train_subnet(
    config: dict[str, Any], spec: StudySpec, experiment: str, fail_trials: frozenset[int] = frozenset(), hold: TrialHold | None = None
) -> None:
    parts, observations = _components(spec.model_dump_json())
    model, task, steps = parts.model, parts.task, spec.ray.steps_per_trial
    skipped = parts.space.decode(config)
    loop.seed_everything(spec.seed)
    model.load_state_dict(_warmup_state(f"{experiment.rstrip('/')}/{WARMUP_FILE}"), strict=False)
    model.set_skipped(skipped)
    trainer = loop.Trainer(model, spec.search, steps, epochs=1)  # steps: micro-batches of this trial
    start = _restore(model, trainer)
    mode = spec.search.observation.mode
    for step, batch in enumerate(itertools.islice(_train_batches(parts, spec), start, steps), start + 1):
        trainer.train(task, batch, step - 1)
        if step % spec.ray.report_every and step < steps:
            continue
        loss = sum(loop.observe(model, task, b, skipped, mode) for b in observations) / len(observations)
        _report(loss, step, model, trainer)
        if not math.isfinite(loss):
            return
        if hold and start == 0 and step == spec.ray.report_every and current_node()["node_id"] == hold.node_id:
            _hold(hold, config["trial_number"])
        if config["trial_number"] in fail_trials:
            raise InjectedFailure(f"injected failure of trial {config['trial_number']} at step {step} (resumed from step {start})")


def _train_batches(parts: Components, spec: StudySpec) -> Iterator[Batch]:
    """Endless training batches, continuing the warm-up's epochs."""
    search = spec.search
    for epoch in itertools.count(search.warmup_epochs):
        yield from loop.epoch_batches(
            parts.task, parts.model, search.batch_size, seed=spec.seed, epoch=epoch, max_steps=search.max_steps_per_epoch
        )


def _report(loss: float, step: int, model, trainer: loop.Trainer) -> None:
    state = {"model": model.trainable_state_dict(), "trainer": trainer.state_dict(), "step": step}
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / _STATE)
        tune.report({"loss": loss, "step": step, **current_node()}, checkpoint=tune.Checkpoint.from_directory(folder))


def _hold(hold: TrialHold, trial_number: int) -> None:
    Path(hold.folder, f"trial{trial_number}").write_text(hold.node_id)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(hold.folder, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def _restore(model, trainer: loop.Trainer) -> int:
    """The step to continue from: 0, or the last checkpoint's after a retry."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / _STATE, map_location=next(model.parameters()).device, weights_only=False)
    model.load_state_dict(state["model"], strict=False)
    trainer.load_state_dict(state["trainer"])
    return state["step"]
