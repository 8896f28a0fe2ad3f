"""The final retrain: the chosen subnet, exported from a fresh pre-trained backbone, trained to the
retrain budget (evaluated on val after every epoch; the best epoch is kept, and with ``retrain.patience``
training stops on a val plateau), evaluated on test, and written out as plain artifacts.

Artifacts in the run folder:
    subnet.json          the space, the skipped layers and how they were found (``results.SubnetFile``)
    adapters.safetensors the trained adapters, skip-adapters and head (nothing frozen)
    metrics.json         the metric, additional FLOPs/MACs, trainable params, latency, wall-clock
                         (``results.RetrainMetrics``)
    study.yaml           the resolved study spec (what ``das-tune retrain RUN_DIR`` reads back)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from safetensors.torch import save_file

from das_tune import config, training
from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.flops import CostModel, measure_latency
from das_tune.components import Components
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.results import FoundBy, RetrainMetrics, SubnetFile, write_json
from das_tune.study import StudySpec

SUBNET_FILE, METRICS_FILE, WEIGHTS_FILE, SPEC_FILE = "subnet.json", "metrics.json", "adapters.safetensors", "study.yaml"


def retrain(spec: StudySpec, parts: Components, skipped: frozenset[str], found_by: FoundBy, reporter: Reporter) -> RetrainMetrics:
    """Train ``skipped``'s subnet from the pre-trained weights with fresh adapters; write artifacts."""
    training.seed_everything(spec.seed)
    full = parts.fresh_backbone()
    parts.task.attach(full)
    subnet = full.export(skipped)
    start = time.perf_counter()
    trained = _train(spec, parts, subnet, reporter)
    test = training.evaluate(subnet, parts.task, "test", spec.retrain.batch_size)
    seconds = time.perf_counter() - start
    metrics = _metrics(spec, parts, full, subnet, skipped, trained, test, seconds, found_by.search_seconds)
    write_artifacts(spec, subnet, skipped, found_by, metrics)
    return metrics


@dataclass(frozen=True)
class Trained:
    """How a retrain's training went: the best epoch's val metrics, that epoch and the epochs run."""

    val: dict[str, float]
    best_epoch: int
    epochs_run: int


def _train(spec: StudySpec, parts: Components, subnet: SkippableBackbone, reporter: Reporter) -> Trained:
    """Train until the val metric plateaus (or the epochs run out); leaves ``subnet`` at its best val epoch."""
    retrain, task = spec.retrain, parts.task
    steps = training.steps_per_epoch(task, retrain.batch_size, retrain.max_steps_per_epoch)
    trainer = training.Trainer(subnet, retrain, steps, retrain.epochs)
    best, best_state = None, {}
    for epoch in range(retrain.epochs):
        reporter.phase(f"retrain {epoch + 1}/{retrain.epochs}", steps)
        batches = training.epoch_batches(task, subnet, retrain.batch_size, seed=spec.seed, epoch=epoch, max_steps=retrain.max_steps_per_epoch)
        for step, batch in enumerate(batches):
            reporter.advance(trainer.train(task, batch, step))
        val = training.evaluate(subnet, task, "val", retrain.batch_size)
        reporter.log(f"retrain epoch {epoch + 1}: val {task.metric} {val[task.metric]:.4f}, loss {val['loss']:.4f}")
        if best is None or val[task.metric] > best.val[task.metric] + retrain.min_delta:
            best_state = {k: v.detach().clone() for k, v in subnet.trainable_state_dict().items()}
            best = Trained(val=val, best_epoch=epoch + 1, epochs_run=epoch + 1)
        elif retrain.patience is not None and epoch + 1 - best.best_epoch >= retrain.patience:
            reporter.log(f"val {task.metric} has not improved for {retrain.patience} epochs: stopping")
            break
    subnet.load_state_dict(best_state, strict=False)
    return replace(best, epochs_run=epoch + 1)


def _metrics(
    spec: StudySpec,
    parts: Components,
    full: SkippableBackbone,
    subnet: SkippableBackbone,
    skipped: frozenset[str],
    trained: Trained,
    test: dict[str, float],
    seconds: float,
    search_seconds: float | None,
) -> RetrainMetrics:
    costs = CostModel(full)
    cost, unskipped = costs.cost(skipped), costs.cost(())
    inputs = full.example_inputs(batch_size=1)
    full.set_skipped(())
    full_ms = measure_latency(full, inputs) * 1e3
    subnet_ms = measure_latency(subnet, inputs) * 1e3
    return RetrainMetrics(
        metric=parts.task.metric, value=test[parts.task.metric], test=test, val=trained.val, skipped=parts.space.ordered(skipped),
        **cost.as_dict(), additional_gmacs=cost.additional_gmacs, flops_saved=1 - cost.flops / unskipped.flops,
        latency_full_ms=full_ms, latency_subnet_ms=subnet_ms, speedup=full_ms / subnet_ms, retrain_seconds=seconds,
        best_epoch=trained.best_epoch, epochs_run=trained.epochs_run,
        search_seconds=search_seconds, retrain_budget=_budget(spec),
    )


def write_artifacts(spec: StudySpec, subnet: SkippableBackbone, skipped: frozenset[str], found_by: FoundBy, metrics: RetrainMetrics) -> None:
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    space = spec.load_space()
    info = SubnetFile(
        space=space.name, candidates=list(space.candidates), num_skip=space.num_skip, skipped=space.ordered(skipped),
        backbone=spec.backbone.model_dump(), task=spec.task.model_dump(), **found_by.model_dump(),
    )
    save_file({k: v.contiguous() for k, v in subnet.trainable_state_dict().items()}, run_dir / WEIGHTS_FILE)
    write_json(info, run_dir / SUBNET_FILE)
    write_json(metrics, run_dir / METRICS_FILE)


def save_spec(spec: StudySpec) -> None:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))


def finished_metrics(spec: StudySpec, skipped: frozenset[str]) -> RetrainMetrics | None:
    """The metrics of an earlier retrain of the same subnet, task and retrain budget in this run
    folder, if there is one."""
    path = spec.run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = RetrainMetrics.read(path)
    except ValidationError:  # written by another version: retrain
        return None
    same = set(metrics.skipped) == skipped and metrics.retrain_budget == _budget(spec)
    return metrics if same else None


def _budget(spec: StudySpec) -> dict[str, Any]:
    """What a retrain's result depends on besides the subnet, as metrics.json stores it."""
    return {"seed": spec.seed, "task": spec.task.model_dump(mode="json"), "retrain": spec.retrain.model_dump(mode="json")}


def read_run(run_dir: Path) -> tuple[StudySpec, SubnetFile]:
    """The spec and subnet of a finished run folder, for ``das-tune retrain RUN_DIR``."""
    spec_path, subnet_path = run_dir / SPEC_FILE, run_dir / SUBNET_FILE
    for path in (spec_path, subnet_path):
        if not path.is_file():
            raise UserError(f"{run_dir}: not a das-tune run folder (expected {path.name} in it)")
    try:
        subnet = SubnetFile.read(subnet_path)
    except ValidationError as err:
        raise UserError(config.validation_message(str(subnet_path), err)) from None
    return config.load(StudySpec, spec_path), subnet
