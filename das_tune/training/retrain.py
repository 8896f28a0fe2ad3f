"""The final retrain: the chosen subnet, exported from a fresh pre-trained backbone, trained to the
retrain budget (evaluated on val after every epoch; the best epoch is kept, and with ``retrain.patience``
training stops on a val plateau), evaluated on test, and written out as plain artifacts.

Artifacts in the run folder (each written atomically):
    subnet.json          the space, the skipped layers and how they were found (``results.SubnetFile``)
    adapters.safetensors the trained adapters, skip-adapters and head (nothing frozen)
    metrics.json         the metric, additional FLOPs/MACs, trainable params, latency, wall-clock
                         (``results.RetrainMetrics``)
    study.yaml           the resolved study spec (what ``das-tune retrain RUN_DIR`` reads back)

A run folder's artifacts are never replaced by a retrain of another budget or subnet: that one goes
to its own folder ``RUN_DIR/retrain-<subnet>-<budget hash>/`` (see ``artifacts_folder``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from das_tune.artifacts import atomic
from das_tune.spec import yaml_reader
from das_tune.training import loop
from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.flops import CostModel, measure_latency
from das_tune.training.components import Components
from das_tune.errors import RunFailure, UserError
from das_tune.progress import Reporter
from das_tune.artifacts.results import FoundBy, RetrainMetrics, SubnetFile, write_json
from das_tune.search.supernet import CHECKPOINT, RAY_TRAIN_FOLDER, WARMUP_CHECKPOINT, load_checkpoint
from das_tune.spec.study import StudySpec

SUBNET_FILE, METRICS_FILE, WEIGHTS_FILE, SPEC_FILE = "subnet.json", "metrics.json", "adapters.safetensors", "study.yaml"


def retrain(
    spec: StudySpec, parts: Components, skipped: frozenset[str], found_by: FoundBy, reporter: Reporter, out_dir: Path | None = None
) -> RetrainMetrics:
    """Train ``skipped``'s subnet from the pre-trained weights with fresh adapters; write artifacts
    into ``out_dir`` (default: the run folder)."""
    loop.seed_everything(spec.seed)
    full = parts.fresh_backbone()
    parts.task.attach(full)
    subnet = full.export(skipped)
    start = time.perf_counter()
    trained = _train(spec, parts, subnet, reporter)
    test = loop.evaluate(subnet, parts.task, "test", spec.retrain.batch_size)
    seconds = time.perf_counter() - start
    metrics = _metrics(spec, parts, full, subnet, skipped, trained, test, seconds, found_by.search_seconds)
    write_artifacts(spec, subnet, skipped, found_by, metrics, out_dir or spec.run_dir)
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
    steps = loop.steps_per_epoch(task, retrain.batch_size, retrain.max_steps_per_epoch)
    trainer = loop.Trainer(subnet, retrain, steps, retrain.epochs)
    best, best_state = None, {}
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


def write_artifacts(
    spec: StudySpec, subnet: SkippableBackbone, skipped: frozenset[str], found_by: FoundBy, metrics: RetrainMetrics, run_dir: Path
) -> None:
    """The four artifacts, each atomically; metrics.json last, so that its presence means "done"."""
    space = spec.load_space()
    info = SubnetFile(
        space=space.name, candidates=list(space.candidates), num_skip=space.num_skip, skipped=space.ordered(skipped),
        backbone=spec.backbone.model_dump(), task=spec.task.model_dump(), **found_by.model_dump(),
    )
    atomic.check_finite(metrics.model_dump(), METRICS_FILE)  # before the first file is written
    weights = {k: v.contiguous() for k, v in subnet.trainable_state_dict().items()}
    atomic.write_with(run_dir / WEIGHTS_FILE, lambda tmp: save_file(weights, tmp))
    write_json(info, run_dir / SUBNET_FILE)
    save_spec(spec, run_dir)
    write_json(metrics, run_dir / METRICS_FILE)


def save_spec(spec: StudySpec, run_dir: Path | None = None) -> None:
    atomic.write_text((run_dir or spec.run_dir) / SPEC_FILE, yaml.safe_dump(spec.model_dump(), sort_keys=False))


def finished_metrics(
    spec: StudySpec, skipped: frozenset[str], run_dir: Path | None = None, *, weights_required: bool = True
) -> RetrainMetrics | None:
    """The metrics of an earlier retrain of the same subnet, task and retrain budget in ``run_dir``
    (default: the run folder), if there is one."""
    metrics = read_metrics(run_dir or spec.run_dir, weights_required=weights_required)
    return metrics if metrics is not None and same_retrain(metrics, spec, skipped) else None


def same_retrain(metrics: RetrainMetrics, spec: StudySpec, skipped: frozenset[str]) -> bool:
    return set(metrics.skipped) == skipped and metrics.retrain_budget == _budget(spec)


def artifacts_folder(run_dir: Path, spec: StudySpec, skipped: frozenset[str], *, own: bool = True) -> Path:
    """Where the retrain of ``skipped`` with ``spec``'s budget goes: the run folder if it holds no
    retrain yet (``own``: it is this retrain's own folder) or holds this same one; else its own
    folder ``RUN_DIR/retrain-<subnet>-<hash of the budget>``, so a finished run is never replaced."""
    metrics = read_metrics(run_dir)
    if metrics is not None and same_retrain(metrics, spec, skipped) or metrics is None and own:
        return run_dir
    label = "+".join(spec.load_space().ordered(skipped)) or "none"
    digest = hashlib.sha256(json.dumps(_budget(spec), sort_keys=True).encode()).hexdigest()[:8]
    return run_dir / f"retrain-{label}-{digest}"


def read_metrics(run_dir: Path, *, weights_required: bool = True) -> RetrainMetrics | None:
    """``run_dir``'s metrics.json if it has one (of this version) and its weights are intact; a damaged
    one is an error. Without ``weights_required`` (a benchmark needs only the numbers, and commits them
    without the weights) absent weights are allowed, damaged ones still are not."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    data = _read_json(path)
    weights = run_dir / WEIGHTS_FILE
    if weights.is_file():
        check_weights(weights)
    elif weights_required:
        raise UserError(f"{run_dir}: {METRICS_FILE} without {WEIGHTS_FILE}; remove {path.name} or pass --fresh")
    try:
        return RetrainMetrics.model_validate(data)
    except ValidationError:  # written by another version: retrain
        return None


def check_weights(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a complete safetensors file ({' '.join(str(err).split())}); remove it or pass --fresh") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); remove it or pass --fresh") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; remove it or pass --fresh")
    return data


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
        subnet = SubnetFile.model_validate(_read_json(subnet_path))
    except ValidationError as err:
        raise UserError(yaml_reader.validation_message(str(subnet_path), err)) from None
    spec = yaml_reader.load(StudySpec, spec_path)
    read_metrics(run_dir)
    return spec, subnet


PROGRESS_FILES = (CHECKPOINT, WARMUP_CHECKPOINT)


def check_run_folder(run_dir: Path) -> None:
    """Every file a run would read back is intact (else a one-line error naming it); called before
    anything is written, so a damaged folder is reported, not built on."""
    for name in PROGRESS_FILES:
        if (run_dir / name).is_file():
            load_checkpoint(run_dir / name)
    for folder in (run_dir, *sorted(run_dir.glob("retrain-*"))):
        if (folder / SUBNET_FILE).is_file():
            _read_json(folder / SUBNET_FILE)
        if (folder / SPEC_FILE).is_file():
            yaml_reader.load(StudySpec, folder / SPEC_FILE)
        read_metrics(folder)


def clear_run_folder(run_dir: Path) -> list[str]:
    """``--fresh``: remove the run's progress and artifacts, its ``retrain-*`` folders and a data-parallel
    run's Ray Train folder included (other files stay); returns what was removed."""
    removed = []
    for name in (*PROGRESS_FILES, METRICS_FILE, SUBNET_FILE, WEIGHTS_FILE, SPEC_FILE):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    for folder in [*sorted(run_dir.glob("retrain-*")), run_dir / RAY_TRAIN_FOLDER]:
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder.name + "/")
    return removed
