"""The main job as a Python API: search which layers to skip, choose, retrain, write artifacts.

    from das_tune.runner import run
    from das_tune.study import load_study_spec
    result = run(load_study_spec("easyvqa_minilm"))
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import optuna

from das_tune.backbones.flops import CostModel
from das_tune.dashboard import save_study_report
from das_tune.components import Components, build_components
from das_tune.progress import Reporter
from das_tune.retrain import finished_metrics, retrain, save_spec
from das_tune.samplers import chosen_skip, make_sampler
from das_tune.search.oneshot import OneShotSearch
from das_tune.storage import get_storage, open_study, shown_url
from das_tune.study import StudySpec
from das_tune.training import seed_everything


def sampler_record(spec: StudySpec) -> dict[str, Any]:
    """How the study samples, as recorded in its system attributes (and compared on resume)."""
    options = spec.sampler.own_options
    if spec.sampler.name == "das":
        options.setdefault("round_size", spec.search.round_size)
    return {"name": spec.sampler.name, "seed": spec.seed, **options}


def open_spec_study(spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter):
    record = sampler_record(spec)
    options = {k: v for k, v in record.items() if k not in ("name", "seed")}
    sampler = make_sampler(spec.sampler.name, parts.space, seed=spec.seed, **options)
    return open_study(spec.storage, spec.resolved_study_name, sampler, record, parts.space, fresh=fresh, log=reporter.log)


def search(
    spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, warmup_checkpoint: Path | None = None
) -> tuple[optuna.Study, dict[str, Any]]:
    """Run (or resume) the search, one-shot ones from ``warmup_checkpoint`` if given; returns the study
    and how the subnet was found (for subnet.json)."""
    study = open_spec_study(spec, parts, fresh=fresh, reporter=reporter)
    cost = CostModel(parts.model)
    start = time.perf_counter()
    if spec.search.executor == "ray":
        from das_tune.search.ray_tune import RaySearch

        RaySearch(spec=spec, parts=parts, study=study, cost=cost, reporter=reporter).run()
    elif spec.search.workers > 1:
        from das_tune.search.data_parallel import run_data_parallel

        run_data_parallel(spec, warmup_checkpoint, reporter)
    else:
        attrs = lambda skipped: trial_attrs(cost.cost(skipped))  # noqa: E731
        OneShotSearch(
            search=spec.search, space=parts.space, model=parts.model, task=parts.task, study=study,
            seed=spec.seed, run_dir=spec.run_dir, trial_attrs=attrs, reporter=reporter,
            warmup_checkpoint=warmup_checkpoint,
        ).run()
    skipped = chosen_skip(study, parts.space)
    found_by = {
        "sampler": spec.sampler.name,
        "executor": spec.search.executor,
        "workers": spec.search.workers,
        "study_name": study.study_name,
        "storage": shown_url(spec.storage),
        "observations": len(study.trials),
        "search_seconds": time.perf_counter() - start,
        "chosen": parts.space.ordered(skipped),
    }
    if spec.sampler.name == "das":
        found_by["probabilities"] = study.sampler.probabilities(study)
    return study, found_by


def engine_session(spec: StudySpec) -> AbstractContextManager:
    """Ray, connected for the search when it runs on Ray (Ray Tune trials, data-parallel workers)."""
    if spec.search.executor != "ray" and spec.search.workers == 1:
        return nullcontext()
    from das_tune.search.ray_cluster import ray_session

    return ray_session(spec.ray, num_cpus=spec.search.workers if spec.search.workers > 1 else None)


def trial_attrs(cost: dict[str, Any]) -> dict[str, Any]:
    return {"additional_gmacs": cost["additional_macs"] / 1e9, "trainable_params": cost["trainable_params"]}


def run(spec: StudySpec, *, fresh: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Search, choose and retrain as ``spec`` declares; returns the metrics written to metrics.json."""
    reporter = reporter or Reporter()
    seed_everything(spec.seed)
    parts = build_components(spec)  # bad input fails here, before the storage is touched
    with engine_session(spec):  # so does a Ray cluster that does not answer
        get_storage(spec.storage)  # and a storage that refuses us
        save_spec(spec)
        study, found_by = search(spec, parts, fresh=fresh, reporter=reporter)
    skipped = frozenset(found_by["chosen"])
    reporter.log(f"chosen subnet: skip {found_by['chosen']}")
    metrics = None if fresh else finished_metrics(spec, skipped)
    if metrics is not None:
        reporter.log(f"this subnet was already retrained: {spec.run_dir / 'metrics.json'}")
    else:
        metrics = retrain(spec, parts, skipped, found_by, reporter)
    save_study_report(study, parts.space, chosen=skipped, result=metrics, artifacts_dir=spec.run_dir)
    return metrics
