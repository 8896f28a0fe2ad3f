"""The (method × seed) runs of a benchmark, each measured the same way.

Per seed: one warm-up of the supernet (uniformly random subnets), saved as ``warmup_state.pt``. Every
sampler's search starts from that checkpoint, trains the same number of steps on the same data and
observes the same number of subsets on the same supernet (weight-sharing fairness); every training-free
method scores layers on the same warm-up supernet. Each pick is then retrained with the study's
retrain budget. Retrains are keyed by (seed, subset): two methods that pick the same subset share one
retrain (it is deterministic given the seed), and ``--ground-truth`` retrains every subset the same way.

Layout under the output folder::

    bench.db                              the studies, ``<study>-<sampler>-seed<k>``, side by side
    plan.yaml                             the resolved study the benchmark runs (checked on re-runs)
    runs/<study>-warmup-seed<k>/          the shared warm-up checkpoint and its cost
    runs/<study>-<sampler>-seed<k>/       each search; run.json holds its record once finished
    retrain/seed<k>/<layer+layer>/        each retrained subset (subnet.json, metrics.json, weights)

A re-run of the same command reuses everything finished and resumes what was interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from das_tune import atomic, runner, storage, training
from das_tune.bench.baselines import METHODS, SIMILARITY_METHODS, layer_scores, sample_batches
from das_tune.components import Components, build_components
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.results import BenchRecord, FoundBy, RetrainMetrics, WarmupRecord, write_json
from das_tune.retrain import finished_metrics, retrain, save_spec
from das_tune.samplers import SAMPLERS
from das_tune.search.supernet import CHECKPOINT, warm_up
from das_tune.spaces import SkipSpace
from das_tune.study import StudySpec, load_study_spec

MAX_GROUND_TRUTH_SUBSETS = 64
RUN_FILE, WARMUP_FILE, PLAN_FILE = "run.json", "warmup.json", "plan.yaml"
BENCH = "das-tune bench"  # how the bench's retrains were found (subnet.json)


@dataclass(frozen=True)
class BenchConfig:
    """What to compare. ``study`` is a built-in study name or a file; ``overrides`` are dotted study
    fields (``tiny``, ``storage``, ``num_skip``, ``search.search_epochs`` …) applied to every run."""

    study: str
    samplers: tuple[str, ...] = ("das", "random", "tpe")
    methods: tuple[str, ...] = METHODS
    seeds: int = 5
    ground_truth: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None  # default: bench/<space>-skip<num_skip>
    reference: str = "das"  # the method the paired tests compare every other with (if it runs)


@dataclass(frozen=True)
class Plan:
    """A validated config with its output folder and storage resolved."""

    config: BenchConfig
    base: StudySpec
    space: SkipSpace
    out: Path
    storage: str  # the URL every search of the benchmark shares (opened once by ``execute``)

    def spec(self, seed: int, sampler: str = "das", **fields: Any) -> StudySpec:
        overrides = {
            **self.config.overrides, "storage": self.storage, "output_dir": str(self.out / "runs"),
            "seed": seed, "sampler.name": sampler, **fields,
        }
        return load_study_spec(self.config.study, overrides)

    @property
    def seeds(self) -> range:
        return range(self.config.seeds)


def plan(config: BenchConfig) -> Plan:
    """Check the config before anything runs; bad input is one clear error."""
    base = load_study_spec(config.study, config.overrides)
    space = base.load_space()
    unknown = [s for s in config.samplers if s not in SAMPLERS] + [m for m in config.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown sampler/method {unknown}: expected samplers from {', '.join(SAMPLERS)} and methods from {', '.join(METHODS)}")
    if not config.samplers and not config.methods:
        raise UserError("nothing to compare: give --samplers and/or --methods")
    if config.seeds < 1:
        raise UserError(f"--seeds: expected at least 1, got {config.seeds}")
    if base.search.executor != "oneshot":
        raise UserError("bench compares samplers on one weight-sharing supernet: expected search.executor = oneshot")
    if base.search.warmup_epochs < 1:
        raise UserError("bench shares one warm-up checkpoint per seed: expected search.warmup_epochs ≥ 1")
    if config.ground_truth and space.num_subsets > MAX_GROUND_TRUTH_SUBSETS:
        raise UserError(
            f"--ground-truth retrains every subset: space {space.label} with num_skip {space.num_skip} has "
            f"{space.num_subsets} (at most {MAX_GROUND_TRUTH_SUBSETS}); lower num_skip with --set num_skip=N"
        )
    out = config.out or Path("bench") / f"{space.label}-skip{space.num_skip}"
    url = config.overrides.get("storage") or f"sqlite:///{out / 'bench.db'}"
    return Plan(config, base, space, out, url)


Truth = dict[int, dict[str, RetrainMetrics]]  # {seed: {subset key: retrain metrics}}


def execute(p: Plan, reporter: Reporter) -> tuple[list[BenchRecord], Truth | None]:
    """Run every (method, seed) and, with ground truth, retrain every subset per seed.

    Returns the run records and the ground truth's retrains (None without ground truth).
    """
    _check_plan_file(p)
    opened = storage.open_storage(p.storage)
    records, truth = [], {} if p.config.ground_truth else None
    for seed in p.seeds:
        reporter.log(f"seed {seed}: warm-up, {len(p.config.methods)} training-free methods, samplers {', '.join(p.config.samplers)}")
        seed_records, seed_truth = _run_seed(p, seed, opened, reporter)
        records += seed_records
        if truth is not None:
            truth[seed] = seed_truth
    return records, truth


def subset_key(space: SkipSpace, skipped: frozenset[str] | list[str]) -> str:
    """``"En0,En3"``: a subset as a JSON key, in candidate order."""
    return ",".join(space.ordered(frozenset(skipped)))


# -- one seed -------------------------------------------------------------------------------------
def _run_seed(
    p: Plan, seed: int, opened: optuna.storages.BaseStorage, reporter: Reporter
) -> tuple[list[BenchRecord], dict[str, RetrainMetrics]]:
    training.seed_everything(seed)
    warm_spec = p.spec(seed, study_name=f"{p.base.name}-warmup-seed{seed}")
    parts = build_components(warm_spec)
    warm = _warm_up(warm_spec, parts, reporter)
    parts.model.load_state_dict(torch.load(warm.checkpoint, weights_only=False)["model"], strict=False)
    records = [_training_free(p, seed, method, parts, warm) for method in p.config.methods]
    records += [_search(p, seed, sampler, parts, warm, opened, reporter) for sampler in p.config.samplers]
    for record in records:
        metrics = _retrained(p, seed, parts, frozenset(record.chosen), reporter)
        steps = training.steps_per_epoch(parts.task, warm_spec.retrain.batch_size, warm_spec.retrain.max_steps_per_epoch)
        retrain_steps = steps * warm_spec.retrain.epochs
        record.metric, record.value, record.additional_gmacs = metrics.metric, metrics.value, metrics.additional_gmacs
        record.flops_saved, record.retrain_steps, record.retrain_seconds = metrics.flops_saved, retrain_steps, metrics.retrain_seconds
        record.total_steps = record.warmup_steps + record.search_steps + retrain_steps
        record.total_seconds = record.warmup_seconds + record.search_seconds + metrics.retrain_seconds
        reporter.log(f"seed {seed}: {record.method} skips {record.chosen} → test {metrics.metric} {metrics.value:.4f}")
    truth = {}
    if p.config.ground_truth:
        for subset in p.space.all_subsets():
            truth[subset_key(p.space, subset)] = _retrained(p, seed, parts, subset, reporter)
    return records, truth


def _warm_up(spec: StudySpec, parts: Components, reporter: Reporter) -> WarmupRecord:
    """The seed's shared warm-up: its checkpoint, training steps and wall-clock (done once)."""
    info_path = spec.run_dir / WARMUP_FILE
    if info_path.is_file():
        return WarmupRecord.read(info_path)
    start = time.perf_counter()
    checkpoint = warm_up(spec, parts, reporter)
    steps = training.steps_per_epoch(parts.task, spec.search.batch_size, spec.search.max_steps_per_epoch)
    info = WarmupRecord(checkpoint=str(checkpoint), steps=steps * spec.search.warmup_epochs, seconds=time.perf_counter() - start)
    write_json(info, info_path)
    return info


def _training_free(p: Plan, seed: int, method: str, parts: Components, warm: WarmupRecord) -> BenchRecord:
    """Layer scores on the warm-up supernet (loaded by the caller) and the subset they pick."""
    search = p.base.search
    start = time.perf_counter()
    batches = sample_batches(parts.task, parts.model, search.batch_size, search.observation_batches)
    scores = layer_scores(method, p.space, parts.model, parts.task, batches)
    return BenchRecord(
        method=method, kind="training-free", seed=seed, study_name=None, chosen=p.space.ordered(p.space.top(scores)),
        layer_scores=scores, observations=0, observed=[], scoring_batches=len(batches) if method in SIMILARITY_METHODS else 0,
        warmup_steps=warm.steps, warmup_seconds=warm.seconds, search_steps=0, search_seconds=time.perf_counter() - start,
    )


def _search(
    p: Plan, seed: int, sampler: str, parts: Components, warm: WarmupRecord, opened: optuna.storages.BaseStorage, reporter: Reporter
) -> BenchRecord:
    """One sampler's search from the shared warm-up checkpoint (its record is reused once finished)."""
    spec = p.spec(seed, sampler)
    saved = spec.run_dir / RUN_FILE
    if saved.is_file():
        return BenchRecord.read(saved)
    with runner.exclusive(spec, opened):
        _check_not_foreign(spec, opened)
        save_spec(spec)
        found = runner.search(spec, parts, reporter=reporter, storage=opened, warmup_checkpoint=Path(warm.checkpoint))
    complete = found.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    steps = training.steps_per_epoch(parts.task, spec.search.batch_size, spec.search.max_steps_per_epoch)
    record = BenchRecord(
        method=sampler, kind="sampler", seed=seed, study_name=spec.resolved_study_name,
        chosen=parts.space.ordered(found.chosen), layer_scores=found.found_by.probabilities,
        observations=len(complete), observed=[t.value for t in complete], scoring_batches=0,
        warmup_steps=warm.steps, warmup_seconds=warm.seconds,
        search_steps=steps * spec.search.search_epochs, search_seconds=found.found_by.search_seconds,
    )
    write_json(record, saved)
    return record


def _retrained(p: Plan, seed: int, parts: Components, skipped: frozenset[str], reporter: Reporter) -> RetrainMetrics:
    """The retrain metrics of ``skipped`` at ``seed``: from an earlier retrain, else retrained now."""
    spec = p.spec(seed, output_dir=str(p.out / "retrain" / f"seed{seed}"), study_name="+".join(p.space.ordered(skipped)))
    done = finished_metrics(spec, skipped)
    if done is not None:
        return done
    save_spec(spec)
    return retrain(spec, parts, skipped, FoundBy(sampler=BENCH), reporter)


def _check_not_foreign(spec: StudySpec, opened: optuna.storages.BaseStorage) -> None:
    """A study of this name that this benchmark did not start (e.g. one of ``das-tune run``) is not extended."""
    ours = (spec.run_dir / CHECKPOINT).is_file()
    if not ours and storage.study_exists(opened, spec.resolved_study_name):
        raise UserError(
            f"study {spec.resolved_study_name!r} already exists in {spec.storage} but was not started by this "
            f"benchmark (no {spec.run_dir / CHECKPOINT}); pass another --storage or --out"
        )


def _check_plan_file(p: Plan) -> None:
    """An output folder holds one benchmark: re-runs must declare the same study."""
    resolved = yaml.safe_dump(p.spec(0).model_dump(), sort_keys=True)
    path = p.out / PLAN_FILE
    if path.is_file() and path.read_text() != resolved:
        raise UserError(f"{p.out} holds a benchmark of another study or budget ({path}); pass another --out")
    atomic.write_text(path, resolved)
