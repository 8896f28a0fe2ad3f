"""The final retrain: the chosen subnet, exported from a fresh pre-trained backbone, trained to the
retrain budget (evaluated on val after every epoch; the best epoch is kept, and with ``retrain.patience``
training stops on a val plateau), evaluated on test, and written out as plain artifacts
(``artifacts.run_folder`` names and writes them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from das_tune.artifacts.results import FoundBy, RetrainMetrics
from das_tune.artifacts.run_folder import retrain_budget, write_artifacts
from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.flops import CostModel, Timing, measure_latency
from das_tune.errors import RunFailure
from das_tune.progress import Reporter
from das_tune.spec.study import RetrainSpec, StudySpec
from das_tune.tasks.base import metric_by_group
from das_tune.training import loop
from das_tune.training.components import Components

STILL_LEARNING = 0.01  # a last epoch that raised the best val metric by this much: the budget ended too soon


def retrain(
    spec: StudySpec, parts: Components, skipped: frozenset[str], found_by: FoundBy, reporter: Reporter, out_dir: Path | None = None,
    full_latency: Timing | None = None,
) -> RetrainMetrics:
    """Train ``skipped``'s subnet from the pre-trained weights with fresh adapters; write artifacts
    into ``out_dir`` (default: the run folder). ``full_latency``: the full model's, measured once for
    several retrains (default: measured here)."""
    loop.seed_everything(spec.seed)
    full = parts.fresh_backbone()
    parts.task.attach(full)
    subnet = full.export(skipped)
    start = time.perf_counter()
    trained = _train(spec, parts, subnet, reporter)
    test = loop.evaluate(subnet, parts.task, "test", spec.retrain.batch_size)
    seconds = time.perf_counter() - start
    metrics = _metrics(spec, parts, full, subnet, skipped, trained, test, seconds, found_by.search_seconds, full_latency)
    return write_artifacts(spec, subnet.trainable_state_dict(), skipped, found_by, metrics, out_dir or spec.run_dir)


@dataclass(frozen=True)
class Trained:
    """How a retrain's training went: the best epoch's val metrics, that epoch, the epochs run and every
    epoch's val metrics."""

    val: dict[str, float]
    best_epoch: int
    epochs_run: int
    history: tuple[dict[str, float], ...] = ()


def _train(spec: StudySpec, parts: Components, subnet: SkippableBackbone, reporter: Reporter) -> Trained:
    """Train until the val metric plateaus (or the epochs run out); leaves ``subnet`` at its best val epoch."""
    retrain, task = spec.retrain, parts.task
    steps = loop.steps_per_epoch(task, retrain.batch_size, retrain.max_steps_per_epoch)
    trainer = loop.Trainer(subnet, retrain, steps, retrain.epochs)
    best, best_state, history = None, {}, []
    for epoch in range(retrain.epochs):
        reporter.phase(f"retrain {epoch + 1}/{retrain.epochs}", steps)
        batches = loop.epoch_batches(task, subnet, retrain.batch_size, seed=spec.seed, epoch=epoch, max_steps=retrain.max_steps_per_epoch)
        for step, batch in enumerate(batches):
            loss = trainer.train(task, batch, step)
            if not math.isfinite(loss):
                raise RunFailure(
                    f"the retrain diverged: training loss {loss} in epoch {epoch + 1} (retrain.lr = {retrain.lr:g}); "
                    "lower retrain.lr; nothing was written"
                )
            reporter.advance(loss)
        val = loop.evaluate(subnet, task, "val", retrain.batch_size)
        history.append(val)
        reporter.log(f"retrain epoch {epoch + 1}: val {task.metric} {val[task.metric]:.4f}, loss {val['loss']:.4f}"
                     + (f" ({groups})" if (groups := by_group(val, task.metric)) else ""))
        if best is None or val[task.metric] > best.val[task.metric] + retrain.min_delta:
            gain = val[task.metric] - (best.val[task.metric] if best else -math.inf)
            best_state = {k: v.detach().clone() for k, v in subnet.trainable_state_dict().items()}
            best = Trained(val=val, best_epoch=epoch + 1, epochs_run=epoch + 1)
        elif retrain.patience is not None and epoch + 1 >= retrain.min_epochs and epoch + 1 - best.best_epoch >= retrain.patience:
            reporter.log(f"val {task.metric} has not improved for {retrain.patience} epochs: stopping")
            break
        if best.val[task.metric] >= task.metric_max:  # no later epoch could be kept: the rest is wasted time
            reporter.log(f"val {task.metric} reached its maximum ({task.metric_max:g}): stopping")
            break
    subnet.load_state_dict(best_state, strict=False)
    trained = replace(best, epochs_run=epoch + 1, history=tuple(history))
    if warning := budget_warning(retrain, trained, task.metric, gain, task.metric_max):
        reporter.warn(warning)
    return trained


def by_group(val: dict[str, float], metric: str) -> str:
    """``yes/no 0.84, shape 0.98, colour 0.99`` for a task that reports its metric by target group, else ''."""
    return ", ".join(f"{group} {value:.2f}" for group, value in metric_by_group(val, metric).items())


def full_model_latency(parts: Components) -> Timing:
    """The full model's latency at batch 1 (every layer, fresh adapters, the task head), for the retrains
    of one run to share."""
    full = parts.fresh_backbone()
    parts.task.attach(full)
    return measure_latency(full, full.example_inputs(batch_size=1))


def _latency_fields(full: Timing, subnet: Timing) -> dict[str, Any]:
    return {
        "latency_full_ms": full.median * 1e3, "latency_subnet_ms": subnet.median * 1e3, "speedup": full.median / subnet.median,
        "latency_full_iqr_ms": (full.q25 * 1e3, full.q75 * 1e3), "latency_subnet_iqr_ms": (subnet.q25 * 1e3, subnet.q75 * 1e3),
        "speedup_within_noise": None if subnet is full else full.overlaps(subnet),  # the full model: 1× by definition
    }


def budget_warning(retrain: RetrainSpec, trained: Trained, metric: str, last_gain: float, metric_max: float = 1.0) -> str | None:
    """One line with the fix, for a retrain that was still learning when its budget ended (its last epoch
    was its best, by at least ``STILL_LEARNING``), or that stopped on a plateau below ``metric_max`` reached
    in the first quarter of its budget (a retrain can sit on one for epochs before it improves)."""
    if trained.best_epoch == retrain.epochs > 1 and last_gain >= STILL_LEARNING:
        return (f"the retrain was still learning: its last epoch ({retrain.epochs}) raised val {metric} by {last_gain:.4f} "
                f"to {trained.val[metric]:.4f}; raise retrain.epochs (or retrain.max_steps_per_epoch)")
    plateau = trained.val[metric] < metric_max
    if plateau and trained.epochs_run < retrain.epochs and 4 * trained.best_epoch <= retrain.epochs:
        groups = f"; by group: {groups}" if (groups := by_group(trained.val, metric)) else ""
        return (f"the retrain stopped at epoch {trained.epochs_run} of {retrain.epochs} on a plateau from epoch "
                f"{trained.best_epoch} (val {metric} {trained.val[metric]:.4f}{groups}); "
                "if that is low, raise retrain.min_epochs (patience stops no retrain before it) or retrain.patience")
    return None


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
    full_latency: Timing | None,
) -> RetrainMetrics:
    costs = CostModel(full)
    cost, unskipped = costs.cost(skipped), costs.cost(())
    inputs = full.example_inputs(batch_size=1)
    full.set_skipped(())
    full_latency = full_latency or measure_latency(full, inputs)
    # the full model against itself is 1× by definition, not a second noisy measurement
    subnet_latency = measure_latency(subnet, inputs) if skipped else full_latency
    return RetrainMetrics(
        metric=parts.task.metric, value=test[parts.task.metric], test=test, val=trained.val, skipped=parts.space.ordered(skipped),
        **cost.model_dump(), additional_gmacs=cost.additional_gmacs, flops_saved=1 - cost.flops / unskipped.flops,
        **_latency_fields(full_latency, subnet_latency), retrain_seconds=seconds,
        best_epoch=trained.best_epoch, epochs_run=trained.epochs_run, val_history=list(trained.history),
        search_seconds=search_seconds, retrain_budget=retrain_budget(spec),
    )
