"""The jobs as a Python API: search which layers to skip, choose, retrain, write artifacts; or retrain
a given subnet. The CLI only parses and prints around these.

    from das_tune.runner import run
    from das_tune.study import load_study_spec
    metrics = run(load_study_spec("easyvqa_minilm"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from das_tune.backbones.flops import CostModel
from das_tune.components import Components, build_components
from das_tune.dashboard import save_study_report
from das_tune.progress import Reporter
from das_tune.results import FoundBy, RetrainMetrics
from das_tune.retrain import finished_metrics, read_run, retrain, save_spec
from das_tune.samplers import SkipPolicy, sampler_from_record, sampler_record, skip_policy
from das_tune.search import get_executor
from das_tune.search.base import SearchRun
from das_tune.storage import open_storage, open_study
from das_tune.study import StudySpec, load_study_spec, override_spec
from das_tune.training import seed_everything

GIVEN_BY_SKIP = "given by --skip"


@dataclass
class Searched:
    """What a search found: its study and policy, the chosen subset, and how (for subnet.json)."""

    study: optuna.Study
    policy: SkipPolicy
    chosen: frozenset[str]
    found_by: FoundBy


def open_spec_study(
    spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, storage: optuna.storages.BaseStorage | None = None
) -> optuna.Study:
    """The spec's study in ``storage`` (default: opened from ``spec.storage``), created or resumed."""
    return _open_study(spec, parts, fresh=fresh, reporter=reporter, storage=storage)[0]


def _open_study(
    spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, storage: optuna.storages.BaseStorage | None
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    record = sampler_record(spec.sampler.name, spec.seed, spec.sampler.own_options, spec.search.round_size)
    sampler = sampler_from_record(record, parts.space)  # a bad sampler name or option fails before the storage is opened
    storage = storage or open_storage(spec.storage)
    study = open_study(storage, spec.resolved_study_name, sampler, record, parts.space, url=spec.storage, fresh=fresh, log=reporter.log)
    return study, storage


def prepare_search(
    spec: StudySpec,
    parts: Components,
    *,
    fresh: bool = False,
    reporter: Reporter,
    storage: optuna.storages.BaseStorage | None = None,
    warmup_checkpoint: Path | None = None,
) -> SearchRun:
    """The spec's study opened (``storage``: the opened ``spec.storage``, opened here if not given),
    its sampler's skip policy and the cost model: what an executor runs."""
    study, storage = _open_study(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
    policy = skip_policy(study.sampler, parts.space, spec.search.round_size)
    return SearchRun(spec, parts, study, storage, policy, CostModel(parts.model), reporter, warmup_checkpoint)


def search(spec: StudySpec, parts: Components, *, reporter: Reporter, **options: Any) -> Searched:
    """Run (or resume) the search with the spec's executor (``options``: see :func:`prepare_search`;
    one-shot searches start from ``warmup_checkpoint`` if given)."""
    run = prepare_search(spec, parts, reporter=reporter, **options)
    start = time.perf_counter()
    get_executor(spec.search.executor)(run)
    study, policy = run.study, run.policy
    found_by = FoundBy(
        sampler=spec.sampler.name, executor=spec.search.executor, study_name=study.study_name, storage=spec.storage,
        observations=len(study.trials), search_seconds=time.perf_counter() - start, probabilities=policy.probabilities(study),
    )
    return Searched(study, policy, policy.chosen(study), found_by)


def run(spec: StudySpec, *, fresh: bool = False, reporter: Reporter | None = None) -> RetrainMetrics:
    """Search, choose and retrain as ``spec`` declares; returns the metrics written to metrics.json."""
    reporter = reporter or Reporter()
    seed_everything(spec.seed)
    parts = build_components(spec)  # bad input fails here, before the storage is touched
    save_spec(spec)
    found = search(spec, parts, fresh=fresh, reporter=reporter)  # opens the storage, once
    reporter.log(f"chosen subnet: skip {parts.space.ordered(found.chosen)}")
    metrics = None if fresh else finished_metrics(spec, found.chosen)
    if metrics is not None:
        reporter.log(f"this subnet was already retrained: {spec.run_dir / 'metrics.json'}")
    else:
        metrics = retrain(spec, parts, found.chosen, found.found_by, reporter)
    save_study_report(found.study, parts.space, policy=found.policy, chosen=found.chosen, result=metrics, artifacts_dir=spec.run_dir)
    return metrics


def retrain_run(
    run_dir: Path, *, skip: list[str] | None = None, overrides: dict[str, Any] | None = None, reporter: Reporter | None = None
) -> tuple[StudySpec, RetrainMetrics]:
    """Retrain a run folder's subnet (or ``skip`` instead) with its resolved study and ``overrides``,
    into the same folder."""
    spec, subnet = read_run(run_dir)
    spec = override_spec(spec, overrides or {}, str(run_dir / "study.yaml"))
    return spec, _retrain(spec, subnet.skipped if skip is None else skip, subnet.found_by, reporter)


def retrain_subset(
    study: str | Path, skip: list[str], *, overrides: dict[str, Any] | None = None, reporter: Reporter | None = None
) -> tuple[StudySpec, RetrainMetrics]:
    """Retrain the subnet that skips ``skip`` (``[]``: the full model with adapters) without a search,
    into its own folder ``<study>-skip-<layers>-seed<k>`` unless ``study_name`` is set."""
    spec = load_study_spec(study, overrides)
    skipped = spec.load_space().validate_subset(skip)
    if spec.study_name is None:  # a search's artifacts are never overwritten
        label = "+".join(spec.load_space().ordered(skipped)) or "none"
        spec = spec.model_copy(update={"study_name": f"{spec.name}-skip-{label}-seed{spec.seed}"})
    return spec, _retrain(spec, list(skipped), FoundBy(sampler=GIVEN_BY_SKIP), reporter)


def _retrain(spec: StudySpec, layers: list[str], found_by: FoundBy, reporter: Reporter | None) -> RetrainMetrics:
    parts = build_components(spec)
    skipped = parts.space.validate_subset(layers)
    save_spec(spec)
    return retrain(spec, parts, skipped, found_by, reporter or Reporter())


