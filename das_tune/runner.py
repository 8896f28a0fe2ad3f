"""The main job as a Python API: search which layers to skip, choose, retrain, write artifacts.

    from das_tune.runner import run
    from das_tune.study import load_study_spec
    result = run(load_study_spec("easyvqa_minilm"))
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from das_tune.backbones.flops import CostModel
from das_tune.dashboard import save_study_report
from das_tune.checks import check_study
from das_tune.components import Components, build_components
from das_tune.errors import RunFailure
from das_tune.lease import StudyLease, folder_lock
from das_tune.progress import Reporter
from das_tune.retrain import (
    METRICS_FILE, artifacts_folder, check_run_folder, clear_run_folder, finished_metrics, read_metrics, retrain, save_spec,
)
from das_tune.samplers import chosen_skip, make_sampler
from das_tune.search.oneshot import OneShotSearch
from das_tune.storage import get_storage, open_study
from das_tune.study import StudySpec
from das_tune.training import seed_everything


def sampler_record(spec: StudySpec) -> dict[str, Any]:
    """How the study samples, as recorded in its system attributes (and compared on resume)."""
    options = spec.sampler.own_options
    if spec.sampler.name == "das":
        options.setdefault("round_size", spec.search.round_size)
    return {"name": spec.sampler.name, "seed": spec.seed, **options}


def sampler_options(spec: StudySpec) -> dict[str, Any]:
    return {k: v for k, v in sampler_record(spec).items() if k not in ("name", "seed")}


def open_spec_study(spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, storage=None):
    sampler = make_sampler(spec.sampler.name, parts.space, seed=spec.seed, **sampler_options(spec))
    return open_study(
        spec.storage, spec.resolved_study_name, sampler, sampler_record(spec), parts.space,
        fresh=fresh, log=reporter.log, storage=storage,
    )


@contextmanager
def exclusive(spec: StudySpec) -> Iterator[optuna.storages.BaseStorage]:
    """Inside, this process is the only writer of the run folder and of the study (``das_tune.lease``);
    yields the opened storage. The folder is locked first, so that a second run there is refused
    before it touches any storage."""
    with folder_lock(spec.run_dir):
        storage = get_storage(spec.storage)
        with StudyLease(storage, spec.resolved_study_name, spec.storage):
            yield storage


def search(
    spec: StudySpec,
    parts: Components,
    *,
    fresh: bool,
    reporter: Reporter,
    warmup_checkpoint: Path | None = None,
    storage: optuna.storages.BaseStorage | None = None,
) -> tuple[optuna.Study, dict[str, Any]]:
    """Run (or resume) the search, one-shot ones from ``warmup_checkpoint`` if given; returns the study
    and how the subnet was found (for subnet.json). Call it inside ``exclusive(spec, storage)``."""
    study = open_spec_study(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
    cost = CostModel(parts.model)
    start = time.perf_counter()
    if spec.search.executor == "ray":
        from das_tune.search.ray_tune import RaySearch

        RaySearch(spec=spec, parts=parts, study=study, cost=cost, reporter=reporter).run()
    else:
        attrs = lambda skipped: _trial_attrs(cost.cost(skipped))  # noqa: E731
        OneShotSearch(
            search=spec.search, space=parts.space, model=parts.model, task=parts.task, study=study,
            seed=spec.seed, run_dir=spec.run_dir, trial_attrs=attrs, reporter=reporter,
            warmup_checkpoint=warmup_checkpoint,
        ).run()
    _check_observed(study)
    skipped = chosen_skip(study, parts.space)
    found_by = {
        "sampler": spec.sampler.name,
        "executor": spec.search.executor,
        "study_name": study.study_name,
        "storage": spec.storage,
        "observations": len(study.trials),
        "search_seconds": time.perf_counter() - start,
        "chosen": parts.space.ordered(skipped),
    }
    if spec.sampler.name == "das":
        found_by["probabilities"] = study.sampler.probabilities(study)
    return study, found_by


def _trial_attrs(cost: dict[str, Any]) -> dict[str, Any]:
    return {"additional_gmacs": cost["additional_macs"] / 1e9, "trainable_params": cost["trainable_params"]}


def _check_observed(study: optuna.Study) -> None:
    """A search without one finite observation has chosen nothing (e.g. every loss was NaN)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(math.isfinite(t.value) for t in complete):
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        raise RunFailure(
            f"study {study.study_name!r}: no trial gave a finite loss ({failed} failed), so no subnet was chosen; "
            "lower search.lr, then run again with --fresh"
        )


def run(spec: StudySpec, *, fresh: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Search, choose and retrain as ``spec`` declares; returns the metrics written to metrics.json,
    with ``artifacts``: the folder that holds them.

    Everything is checked before anything is written; a finished run's artifacts are kept (a retrain
    of another budget or subnet goes to its own folder, see ``retrain.artifacts_folder``) unless
    ``fresh``, which deletes the study and the run folder's progress and artifacts first.
    """
    reporter = reporter or Reporter()
    seed_everything(spec.seed)
    parts = build_components(spec)  # bad input fails here, before the storage is touched
    check_study(spec, parts, sampler_options(spec))
    if not fresh:
        check_run_folder(spec.run_dir)
    with exclusive(spec) as storage:
        if fresh:
            removed = clear_run_folder(spec.run_dir)
            if removed:
                reporter.log(f"--fresh: removed {', '.join(removed)} from {spec.run_dir}")
        if read_metrics(spec.run_dir) is None:  # a finished run's study.yaml describes its artifacts: kept
            save_spec(spec)
        study, found_by = search(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
        skipped = frozenset(found_by["chosen"])
        reporter.log(f"chosen subnet: skip {found_by['chosen']}")
        folder = artifacts_folder(spec.run_dir, spec, skipped)
        metrics = finished_metrics(spec, skipped, folder)
        if metrics is not None:
            reporter.log(f"this subnet was already retrained: {folder / METRICS_FILE}")
        else:
            if folder != spec.run_dir:
                reporter.log(f"{spec.run_dir} holds the retrain of another budget or subnet (kept); this one goes to {folder}")
            metrics = retrain(spec, parts, skipped, found_by, reporter, out_dir=folder)
        save_study_report(study, parts.space, chosen=skipped, result=metrics, artifacts_dir=folder)
    return {**metrics, "artifacts": str(folder)}
