"""The jobs as a Python API: search which layers to skip, choose, retrain, write artifacts; or retrain
a given subnet. The CLI only parses and prints around these.

    from das_tune.jobs.runner import run
    from das_tune.spec.study import load_study_spec
    done = run(load_study_spec("easyvqa_minilm"))  # done.metrics, done.artifacts
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from das_tune.artifacts.results import FoundBy, RetrainMetrics
from das_tune.artifacts.run_folder import (
    METRICS_FILE,
    artifacts_folder,
    check_run_folder,
    clear_run_folder,
    finished_metrics,
    read_metrics,
    read_run,
    save_spec,
)
from das_tune.errors import RunFailure
from das_tune.jobs.checks import check_resumable, check_storage, check_study, check_writable_folder
from das_tune.progress import Reporter
from das_tune.samplers import SkipPolicy
from das_tune.search import executor_entry, executor_name, get_executor
from das_tune.search.prepare import prepare_search
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import StudySpec, load_study_spec, override_spec
from das_tune.storage.lease import StudyLease, folder_lock
from das_tune.storage.opener import OpenedStorage, shown_url, storage_failures
from das_tune.tasks.base import Task
from das_tune.training.components import Components, build_components
from das_tune.training.loop import seed_everything
from das_tune.training.retrain import retrain

GIVEN_BY_SKIP = "given by --skip"


@dataclass
class Searched:
    """What a search found: its study and policy, the chosen subset, and how (for subnet.json)."""

    study: optuna.Study
    policy: SkipPolicy
    chosen: frozenset[str]
    found_by: FoundBy


@dataclass
class FinishedRetrain:
    """A retrain's metrics (as metrics.json holds them) and the folder that holds its artifacts."""

    metrics: RetrainMetrics
    artifacts: Path
    tie_break: str | None = None  # how the search's choice was a tie-break, in words


@contextmanager
def exclusive(spec: StudySpec, storage: OpenedStorage | None = None, *, resuming: bool = False) -> Iterator[OpenedStorage]:
    """Inside, this process is the only writer of the run folder and of the study (``das_tune.storage.lease``);
    yields the opened storage (``storage``, the opened ``spec.storage``, if given). The folder is
    locked first, so that a second run there is refused before it touches any storage; ``resuming``: then
    the folder's progress is checked to belong to a study the storage holds (``check_storage``)."""
    with folder_lock(spec.run_dir):
        if resuming:
            check_storage(spec)
        storage = storage or OpenedStorage.open(spec.storage)
        with StudyLease(storage, spec.resolved_study_name), storage_failures(storage.url):
            yield storage


@contextmanager
def opening(
    spec: StudySpec,
    *,
    fresh: bool,
    reporter: Reporter,
    folders: Sequence[Path] = (),
    check: Callable[[StudySpec, SkipSpace, Task], None] | None = None,
    clear: Callable[[Path], list[str]] | None = None,
) -> Iterator[tuple[Components, OpenedStorage]]:
    """How every search job opens: its run folder (and ``folders``) checked, the components built and
    checked before the model is (``check``: the job's own needs, whose messages are the more specific, then
    ``check_study``), a Ray cluster reached — all before anything is written — then ``exclusive``; with
    ``fresh`` the run folder is cleared (``clear``: the job's own files too). Yields the components and
    the opened storage."""
    if not fresh:  # a damaged run folder is refused before the model is built
        for folder in (spec.run_dir, *folders):
            check_run_folder(folder)
        check_resumable(spec)
    seed_everything(spec.seed)

    def checks(spec: StudySpec, space: SkipSpace, task: Task) -> None:
        if check is not None:
            check(spec, space, task)
        check_study(spec, space, task)

    parts = build_components(spec, checks)  # bad input fails here, before the storage is touched
    if spec.ray.address and executor_entry(spec.search).uses_ray:  # so does a Ray cluster that does not answer
        from das_tune.search.ray_cluster import check_reachable

        check_reachable(spec.ray.address)
    with exclusive(spec, resuming=not fresh) as storage:
        if fresh:
            removed = clear_run_folder(spec.run_dir) + (clear(spec.run_dir) if clear else [])
            if removed:
                reporter.log(f"--fresh: removed {', '.join(removed)} from {spec.run_dir}")
        yield parts, storage


def search(spec: StudySpec, parts: Components, *, reporter: Reporter, **options: Any) -> Searched:
    """Run (or resume) the search with the spec's executor (``options``: see :func:`prepare_search`;
    one-shot searches start from ``warmup_checkpoint`` if given). Call it inside ``exclusive(spec)``."""
    run = prepare_search(spec, parts, reporter=reporter, **options)
    start = time.perf_counter()
    get_executor(executor_name(spec.search))(run)
    study, policy = run.study, run.policy
    _check_observed(study)
    race = is_race(spec)
    probabilities = None if race else policy.probabilities(study)
    tied = parts.space.tied_at_cut(probabilities) if probabilities and not parts.space.is_range else []
    found_by = FoundBy(
        sampler=spec.sampler.name, executor=executor_name(spec.search), workers=spec.search.workers,
        study_name=study.study_name, storage=shown_url(spec.storage),
        observations=len(study.trials), search_seconds=time.perf_counter() - start, probabilities=probabilities,
        tie_break=tied or None,
    )
    return Searched(study, policy, SkipPolicy(parts.space).chosen(study) if race else policy.chosen(study), found_by)


def is_race(spec: StudySpec) -> bool:
    """A Ray search whose trials are all one round of its sampler (``search.round_size ≥ ray.num_trials``): the
    sampler learns nothing during it, so its pick is the best trial that trained every step (the scheduler prunes the
    others), not the sampler's choice."""
    return executor_name(spec.search) == "ray" and spec.search.round_size >= spec.ray.num_trials


def _check_observed(study: optuna.Study) -> None:
    """A search without one finite observation has chosen nothing (e.g. every loss was NaN)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(math.isfinite(t.values[0]) for t in complete):
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        raise RunFailure(
            f"study {study.study_name!r}: no trial gave a finite loss ({failed} failed), so no subnet was chosen; "
            "lower search.lr, then run again with --fresh"
        )


def run(spec: StudySpec, *, fresh: bool = False, reporter: Reporter | None = None) -> FinishedRetrain:
    """Search, choose and retrain as ``spec`` declares; returns the metrics written to metrics.json and
    the folder that holds them.

    Everything is checked before anything is written; a finished run's artifacts are kept (a retrain
    of another budget or subnet goes to its own folder, see ``retrain.artifacts_folder``) unless
    ``fresh``, which deletes the study and the run folder's progress and artifacts first.
    """
    reporter = reporter or Reporter()
    with opening(spec, fresh=fresh, reporter=reporter) as (parts, storage):
        if read_metrics(spec.run_dir) is None:  # a finished run's study.yaml describes its artifacts: kept
            save_spec(spec)
        found = search(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
        reporter.log(f"chosen subnet: skip {parts.space.ordered(found.chosen)}")
        tie = _tie_break(found.found_by, found.chosen, parts.space.num_skip)
        if tie is not None:
            reporter.log(f"the choice was a tie-break: {tie}")
        folder = artifacts_folder(spec.run_dir, spec, found.chosen)
        metrics = finished_metrics(spec, found.chosen, folder)
        if metrics is not None:
            reporter.log(f"this subnet was already retrained: {folder / METRICS_FILE}")
        else:
            if folder != spec.run_dir:
                reporter.log(f"{spec.run_dir} holds the retrain of another budget or subnet (kept); this one goes to {folder}")
            metrics = retrain(spec, parts, found.chosen, found.found_by, reporter, out_dir=folder)
        # imported here: optuna_dashboard imports optuna.importance (seconds), which retrain and bench never need
        from das_tune.report.dashboard import save_study_report

        save_study_report(found.study, parts.space, policy=found.policy, chosen=found.chosen, result=metrics, artifacts_dir=folder)
    return FinishedRetrain(metrics, folder, tie)


def _tie_break(found_by: FoundBy, chosen: frozenset[str], num_skip: int) -> str | None:
    tied = found_by.tie_break
    if not tied or found_by.probabilities is None:
        return None
    p = found_by.probabilities[tied[0]]
    picked = [c for c in tied if c in chosen]
    return (f"{', '.join(tied)} ended with equal skip probabilities ({p:.2f}), and candidate order picked "
            f"{', '.join(picked)} among them for the {num_skip} to skip; a longer search (search.search_epochs) can separate them")


def retrain_run(
    run_dir: Path, *, skip: list[str] | None = None, overrides: dict[str, Any] | None = None, reporter: Reporter | None = None
) -> tuple[StudySpec, FinishedRetrain]:
    """Retrain a run folder's subnet (or ``skip`` instead) with its resolved study and ``overrides``.
    The run folder's own artifacts are kept: a retrain of another budget or subnet goes to its own
    folder ``RUN_DIR/retrain-<subnet>-<budget hash>`` (the same budget and subnet again: the existing result)."""
    run_dir = Path(run_dir).expanduser().resolve()  # this folder, wherever the command runs
    spec, subnet = read_run(run_dir)
    spec = override_spec(spec, overrides or {}, str(run_dir / "study.yaml"))
    layers = subnet.skipped if skip is None else skip
    return spec, _retrain(spec, layers, subnet.found_by, reporter, run_dir=run_dir)


def retrain_subset(
    study: str | Path, skip: list[str], *, overrides: dict[str, Any] | None = None, reporter: Reporter | None = None
) -> tuple[StudySpec, FinishedRetrain]:
    """Retrain the subnet that skips ``skip`` (``[]``: the full model with adapters) without a search,
    into its own folder ``<study>-skip-<layers>-seed<k>`` (``-tiny`` for a tiny one) unless ``study_name`` is set."""
    spec = load_study_spec(study, overrides)
    skipped = spec.load_space().validate_subset(skip)
    if spec.study_name is None:  # a search's artifacts are never overwritten
        label = "+".join(spec.load_space().ordered(skipped)) or "none"
        tiny = "-tiny" if spec.tiny else ""
        spec = spec.model_copy(update={"study_name": f"{spec.name}-skip-{label}-seed{spec.seed}{tiny}"})
    check_writable_folder(Path(spec.output_dir), "output_dir")
    return spec, _retrain(spec, list(skipped), FoundBy(sampler=GIVEN_BY_SKIP), reporter)


def _retrain(
    spec: StudySpec, layers: list[str], found_by: FoundBy, reporter: Reporter | None, *, run_dir: Path | None = None
) -> FinishedRetrain:
    """Into ``run_dir`` (a run's folder) or, if None, the spec's own folder; see ``artifacts_folder``."""
    reporter = reporter or Reporter()
    parts = build_components(spec)
    skipped = parts.space.validate_subset(layers)
    own = run_dir is None
    run_dir = run_dir or spec.run_dir
    check_run_folder(run_dir)
    folder = artifacts_folder(run_dir, spec, skipped, own=own)
    with folder_lock(run_dir):
        metrics = finished_metrics(spec, skipped, folder)
        if metrics is not None:
            reporter.log(f"this subnet was already retrained with this budget: {folder / METRICS_FILE}")
        else:
            metrics = retrain(spec, parts, skipped, found_by, reporter, out_dir=folder)
    return FinishedRetrain(metrics, folder)
