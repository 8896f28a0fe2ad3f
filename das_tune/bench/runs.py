"""The (method × seed) runs of a benchmark and the retrains that judge them, each measured the same way.

Per search seed: one warm-up of the supernet (uniformly random subnets), saved as ``warmup_state.pt``.
Every sampler's search starts from that checkpoint, trains the same number of steps on the same data and
observes the same number of subsets on the same supernet (weight-sharing fairness); every training-free
method scores layers on the same warm-up supernet. Each pick is then retrained at every *retrain seed*
with the study's retrain budget. Retrains are keyed by (retrain seed, subset) and shared by all search
seeds and methods: a subset's result is the mean over the retrain seeds, and its spread is the noise.

The *reference subsets* are every subset of a small space (at most ``MAX_ALL_SUBSETS``) or a fixed random
sample of ``reference_size`` of them; ``--ground-truth`` retrains them all the same way, so that every pick
gets a regret and a percentile. Each supernet's loss of every reference subset is recorded too, to show
how well the supernet ranks subsets.

Layout under the output folder::

    bench.db                              the studies, ``<study>-<method>-seed<k>``, side by side
    plan.yaml                             the resolved study and bench settings (checked on re-runs)
    records/<method>-seed<k>.json         what each method found at each seed (its search record)
    runs/<study>-warmup-seed<k>/          the shared warm-up checkpoint, its cost and its subset losses
    runs/<study>-<method>-seed<k>/        each sampler's search (resumable)
    retrain/seed<r>/<layer+layer>/        each retrain (subnet.json, metrics.json, weights)

A re-run reuses every finished search and retrain and resumes what was interrupted; runs of other seeds
(``--seeds 0-4`` then ``--seeds 5-9``) add to the same folder and the same results. Several processes may
work on one folder at once (e.g. one per core): a search seed and each retrain hold their folder's lock,
and a process skips the retrains that another one holds and, of a seed that another one runs, retrains
the picks its searches have saved (from the last one back).
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
import torch
import yaml

from das_tune.artifacts import atomic
from das_tune.artifacts.results import FoundBy, LadderRecord, RetrainMetrics, SearchRecord, SupernetLosses, Warmup, write_json
from das_tune.artifacts.run_folder import CHECKPOINT, finished_metrics, save_spec
from das_tune.bench.baselines import METHODS, SIMILARITY_METHODS, layer_scores, sample_batches
from das_tune.errors import FolderInUse, UserError, shorten
from das_tune.jobs import runner
from das_tune.progress import Reporter
from das_tune.samplers import SAMPLERS
from das_tune.samplers.das import prior_gates
from das_tune.search import ONESHOT
from das_tune.search.base import STEPS_ATTR
from das_tune.search.supernet import warm_up
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import SearchSpec, StudySpec, load_study_spec
from das_tune.storage.lease import folder_lock
from das_tune.storage.opener import OpenedStorage, study_exists
from das_tune.training import loop
from das_tune.training.components import Components, build_components, build_spec_task
from das_tune.training.retrain import retrain

Record = TypeVar("Record", SearchRecord, LadderRecord)
MAX_SEEDS = 10_000  # a bench of more search seeds would never end; a typo is refused before it allocates
MAX_ALL_SUBSETS = 64  # up to this many subsets the ground truth is every subset, above it a sample
REFERENCE_SEED = 0  # the reference sample depends on the space and its size only
MIN_VERDICT_REFERENCE = 40
PRIOR_SCALE = 0.5  # das_angular's prior strength, in gate units per sd of the scores: see docs/benchmarks.md
WARMUP_FILE, PLAN_FILE, LOSSES_FILE = "warmup.json", "plan.yaml", "losses.json"
BENCH = "das-tune bench"  # how the bench's retrains were found (subnet.json)

@dataclass(frozen=True)
class SamplerMethod:
    """A bench method that searches with a registry sampler: the sampler, its fixed options and, for a race, the
    study fields that make it one (it runs the Ray Tune executor from the same warm-up instead of observing
    subsets on the supernet); for DAS with a prior, the training-free method whose layer scores on the warm-up
    supernet start its gates, at ``prior_scale`` gate units per standard deviation of the scores."""

    sampler: str
    options: dict[str, Any] = field(default_factory=dict)
    race: dict[str, Any] = field(default_factory=dict)
    prior: str | None = None
    prior_scale: float = 0.0


# Sampler methods other than a registry sampler with its defaults. "das" is the reference rule even when the
# study standardises its advantages; "das_std" is DAS with standardised advantages. "asha" races
# ``ray.num_trials`` distinct subsets, drawn uniformly (DAS's policy with them all in one round, so no gate has
# moved when they are drawn), each trained ``ray.steps_per_trial`` steps from the warm-up state while ASHA stops
# the worse ones at its rungs; the best subset that trained every step is the pick. Its budget is the study's
# ``ray`` section. "das_angular" is DAS whose gates start from the angular distances of the warm-up supernet
# (standardised advantages, so that its few observations can overrule the prior).
NAMED_SAMPLERS: dict[str, SamplerMethod] = {
    "das": SamplerMethod("das", {"standardize": False}),
    "das_std": SamplerMethod("das", {"standardize": True}),
    "das_angular": SamplerMethod("das", {"standardize": True}, prior="angular", prior_scale=PRIOR_SCALE),
    "asha": SamplerMethod("das", {"standardize": False}, race={"search.executor": "ray", "ray.scheduler": "asha"}),
}
RACES = tuple(name for name, method in NAMED_SAMPLERS.items() if method.race)
DEFAULT_SAMPLERS = ("das", "das_std", "random", "tpe")


def sampler_of(method: str) -> SamplerMethod | None:
    """What a sampler method runs, or None if it is not one. A method with a prior takes another strength after
    an ``@`` (``das_angular@1``: one gate unit per standard deviation of the scores)."""
    name, at, scale = method.partition("@")
    if at:
        prior = NAMED_SAMPLERS.get(name)
        strength = _positive_float(scale)
        return replace(prior, prior_scale=strength) if prior and prior.prior and strength else None
    if method in NAMED_SAMPLERS:
        return NAMED_SAMPLERS[method]
    return SamplerMethod(method) if method in SAMPLERS else None


def _positive_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < math.inf else None


@dataclass(frozen=True)
class SupernetBudget:
    """Supernets of random subnets (the study's ``search.warmup_draw``) whose val losses rank the reference subsets:
    ``supernets`` of them, at different seeds, each trained ``steps`` steps; with more than one, a subset's score
    is its mean loss over them (an ensemble costing ``supernets × steps`` steps)."""

    steps: int
    supernets: int = 1

    @property
    def label(self) -> str:
        return str(self.steps) if self.supernets == 1 else f"{self.supernets}x{self.steps}"

    @classmethod
    def parse(cls, text: str) -> tuple[SupernetBudget, ...]:
        """``"90,300,2x300"``: step counts, each optionally ``N x`` supernets averaged."""
        budgets = []
        for part in (p.strip().lower() for p in text.split(",") if p.strip()):
            match = re.fullmatch(r"(?:(\d+)x)?(\d+)", part)
            if match is None:
                raise UserError(f"--supernet-steps {text!r}: expected step counts, each optionally N x (90,300,2x300)")
            budget = cls(int(match[2]), int(match[1] or 1))
            if not (1 <= budget.steps <= 1_000_000 and 1 <= budget.supernets <= 100):
                raise UserError(f"--supernet-steps {text!r}: expected 1 to 1000000 steps and 1 to 100 supernets per budget")
            budgets.append(budget)
        return tuple(dict.fromkeys(budgets))


@dataclass(frozen=True)
class BenchConfig:
    """What to compare. ``study`` is a built-in study name or a file; ``overrides`` are dotted study
    fields (``tiny``, ``storage``, ``num_skip``, ``search.search_epochs`` …) applied to every run."""

    study: str
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    retrain_seeds: int = 2
    ground_truth: bool = False
    reference_size: int = MIN_VERDICT_REFERENCE
    overrides: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None  # default: bench/<space>-skip<num_skip> (-tiny with tiny mode)
    supernet_budgets: tuple[SupernetBudget, ...] = ()  # supernets whose ranking of the reference is measured
    supernet_seeds: tuple[int, ...] | None = None  # the seeds of those supernets (default: the search seeds)
    reference: str = "das"  # the method the paired tests compare every other with (if it runs)


@dataclass(frozen=True)
class Plan:
    """A validated config with its output folder, storage, budget and reference subsets resolved."""

    config: BenchConfig
    base: StudySpec
    space: SkipSpace
    out: Path
    storage: str
    steps_per_epoch: int
    retrain_steps: int  # of one retrain
    observations: int
    reference: tuple[frozenset[str], ...]
    warnings: tuple[str, ...]

    def spec(self, seed: int, sampler: str = "das", options: dict[str, Any] | None = None, **fields: Any) -> StudySpec:
        """The study of one (sampler, seed); ``options`` are added to the sampler method's own (a prior's gates)."""
        method = sampler_of(sampler) or SamplerMethod(sampler)
        name, options = method.sampler, {**method.options, **(options or {})}
        if method.race:
            fields = {**method.race, "search.round_size": self.base.ray.num_trials, **fields}
        overrides = {
            **self.config.overrides, "storage": self.storage, "output_dir": str(self.out / "runs"), "seed": seed,
            "sampler.name": name, f"sampler.options.{name}": {**self.base.sampler.options.get(name, {}), **options},
            "study_name": f"{self.base.name}-{sampler}-seed{seed}", **fields,
        }
        return load_study_spec(self.config.study, overrides)

    @property
    def supernet_seeds(self) -> tuple[int, ...]:
        return self.config.supernet_seeds or self.config.seeds

    @property
    def supernet_steps(self) -> tuple[int, ...]:
        """The step counts of the supernets to train at each supernet seed (an ensemble reuses them)."""
        return tuple(dict.fromkeys(b.steps for b in self.config.supernet_budgets))

    @property
    def retrain_seeds(self) -> range:
        return range(self.config.retrain_seeds)

    @property
    def reference_kind(self) -> str:
        return "all" if len(self.reference) == self.space.num_subsets else "sample"


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"5"`` → seeds 0..4; ``"5-9"`` → 5..9; ``"0,3,7"`` → those."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            seeds = range(first, last + 1)
        elif "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = range(int(text))
    except ValueError:
        raise UserError(f"--seeds {shorten(text)!r}: expected a count (5), a range (5-9) or a list (0,3,7)") from None
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"--seeds {shorten(text)!r}: {len(seeds):,} seeds; expected at most {MAX_SEEDS:,}")
    seeds = tuple(seeds)
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected at least one seed, none negative or repeated")
    return seeds


def plan(config: BenchConfig) -> Plan:
    """Check the config before anything runs; bad input is one clear error."""
    base = load_study_spec(config.study, config.overrides)
    space = base.load_space()
    unknown = [s for s in config.samplers if sampler_of(s) is None] + [m for m in config.methods if m not in METHODS]
    if unknown:
        raise UserError(
            f"unknown sampler/method {unknown}: expected samplers from {', '.join(dict.fromkeys([*NAMED_SAMPLERS, *SAMPLERS]))} "
            "(a prior's strength after an @: das_angular@1, above 0) "
            f"and methods from {', '.join(METHODS)}"
        )
    # the default reference falls back to the first method when it does not run; one asked for must run
    if config.reference != BenchConfig.reference and config.reference not in (*config.samplers, *config.methods):
        raise UserError(f"--reference-method {config.reference!r}: expected one of the methods that run "
                        f"({', '.join((*config.samplers, *config.methods)) or 'none'})")
    if not (config.samplers or config.methods or config.ground_truth or config.supernet_budgets):
        raise UserError("nothing to measure: give --samplers, --methods, --ground-truth or --supernet-steps")
    if not config.seeds:
        raise UserError("--seeds: expected at least one seed")
    if config.supernet_seeds and not config.supernet_budgets:
        raise UserError("--supernet-seeds: the seeds of the budget supernets; give their budgets with --supernet-steps")
    ensemble = max((b.supernets for b in config.supernet_budgets), default=1)
    if ensemble > len(config.supernet_seeds or config.seeds):
        raise UserError(f"--supernet-steps: an ensemble of {ensemble} supernets needs at least {ensemble} supernet seeds "
                        f"(--supernet-seeds), got {len(config.supernet_seeds or config.seeds)}")
    if config.retrain_seeds < 1 or (config.ground_truth and config.retrain_seeds < 2):
        raise UserError(f"--retrain-seeds: expected at least 2 with --ground-truth (its noise is measured), got {config.retrain_seeds}")
    if base.search.executor != ONESHOT:
        raise UserError("bench compares samplers on one weight-sharing supernet: expected search.executor = oneshot")
    if space.is_range:
        raise UserError(f"plan() is for one num_skip, not a range ({space.num_skip_label}): see das_tune.bench.ladder")
    if base.search.warmup_epochs < 1:
        raise UserError("bench shares one warm-up checkpoint per seed: expected search.warmup_epochs ≥ 1")
    task = build_spec_task(base)
    steps = loop.steps_per_epoch(task, base.search.batch_size, base.search.max_steps_per_epoch)
    retrain_steps = loop.steps_per_epoch(task, base.retrain.batch_size, base.retrain.max_steps_per_epoch) * base.retrain.epochs
    observations = observation_rounds(base.search, steps) * base.search.round_size
    warnings = _check_budget(space, observations) if any(s not in RACES for s in config.samplers) else []
    warnings += _tpe_startup_warnings(base, config.samplers, observations)
    if any(s in RACES for s in config.samplers) and not 2 <= base.ray.num_trials <= space.num_subsets:
        raise UserError(f"ray.num_trials = {base.ray.num_trials}: a race trains distinct subsets, between 2 and the space's "
                        f"{space.num_subsets}")
    reference = reference_subsets(space, config.reference_size)
    if len(reference) < space.num_subsets and len(reference) < MIN_VERDICT_REFERENCE:
        warnings.append(f"a reference sample of {len(reference)} subsets is small for a verdict (use ≥ {MIN_VERDICT_REFERENCE})")
    out = config.out or Path("bench") / f"{space.label}-skip{space.num_skip}{'-tiny' if base.tiny else ''}"
    url = config.overrides.get("storage") or f"sqlite:///{out / 'bench.db'}"
    return Plan(config, base, space, out, url, steps, retrain_steps, observations, reference, tuple(warnings))


def observation_rounds(search: SearchSpec, steps_per_epoch: int) -> int:
    """The rounds a one-shot search observes: one at every global step (warm-up steps counted) that is a
    multiple of ``observe_every``, during the search epochs."""
    warm, end = search.warmup_epochs * steps_per_epoch, (search.warmup_epochs + search.search_epochs) * steps_per_epoch
    return end // search.observe_every - warm // search.observe_every


def _check_budget(space: SkipSpace, observations: int) -> list[str]:
    """Samplers can only be told apart when they observe far fewer subsets than there are."""
    if observations == 0:
        raise UserError("the search budget has no observation round: raise search.search_epochs or lower search.observe_every")
    if observations >= space.num_subsets:
        raise UserError(
            f"every sampler would observe {observations} subsets of only {space.num_subsets}: nothing separates "
            "samplers; lower the observation budget (search.search_epochs, search.observe_every, search.round_size) "
            "or use a larger space (num_skip, a sublayer space)"
        )
    if 4 * observations > space.num_subsets:
        return [f"every sampler observes {observations} of {space.num_subsets} subsets: samplers are hard to tell apart "
                "above a quarter of the space"]
    return []


def _tpe_startup_warnings(base: StudySpec, samplers: tuple[str, ...], observations: int) -> list[str]:
    """TPE whose random start-up trials cover every observation is random search in this bench."""
    startup = base.sampler.options.get("tpe", {}).get(
        "n_startup_trials", inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    )
    if "tpe" in samplers and observations <= startup:
        return [f"tpe draws its first {startup} trials at random (n_startup_trials) and observes {observations}: here it is "
                "random search (set sampler.options.tpe.n_startup_trials lower to compare TPE itself)"]
    return []


def reference_subsets(space: SkipSpace, size: int) -> tuple[frozenset[str], ...]:
    """Every subset of a small space, else ``size`` distinct random subsets drawn with a fixed seed."""
    if space.num_subsets <= MAX_ALL_SUBSETS or size >= space.num_subsets:
        return tuple(space.all_subsets())
    if size < 2:
        raise UserError(f"--reference-size: expected at least 2 subsets, got {size}")
    rng = np.random.default_rng(REFERENCE_SEED)
    drawn: dict[frozenset[str], None] = {}
    while len(drawn) < size:
        drawn.setdefault(frozenset(rng.choice(space.candidates, size=space.num_skip, replace=False).tolist()))
    return tuple(drawn)


def ground_truth_order(p: Plan) -> list[frozenset[str]]:
    """The reference subsets in the fixed random order they are retrained in, one retrain seed after the
    other: a ground truth stopped part-way has a random sample of the subsets, all of them at the first
    retrain seed before any at the second."""
    order = np.random.default_rng(REFERENCE_SEED).permutation(len(p.reference))
    return [p.reference[i] for i in order]


def subset_key(space: SkipSpace, skipped: frozenset[str] | list[str]) -> str:
    """``"En0,En3"``: a subset as a JSON key, in candidate order."""
    return ",".join(space.ordered(frozenset(skipped)))


def execute(p: Plan, reporter: Reporter) -> None:
    """Run every (method, seed) of the config, retrain its picks and, with ground truth, the reference.

    Everything lands on disk (see the module's layout); :func:`collect` reads it back."""
    check_same_plan(p)  # before the storage is created in the folder
    opened = OpenedStorage.open(p.storage)  # a storage that refuses us is bad input, found before anything is written
    check_plan_file(p)
    for warning in p.warnings:  # after every refusal: a refused run says one line
        reporter.log(f"warning: {warning}")
    parts = None
    searched = p.config.samplers or p.config.methods  # a ground truth alone needs no warm-up
    for seed in p.config.seeds if searched else ():
        reporter.log(f"seed {seed}: warm-up, {len(p.config.methods)} training-free methods, samplers {', '.join(p.config.samplers)}")
        parts = _run_seed(p, seed, opened, reporter) or parts
    for seed in p.supernet_seeds:
        for steps in p.supernet_steps:
            if (losses := budget_supernet(p, seed, steps, reporter)) is not None:
                reporter.log(f"seed {seed}: a supernet of {losses.steps} steps scored the reference on val")
    if p.config.ground_truth:
        parts = parts or build_components(p.spec(p.config.seeds[0]))
        todo = [(r, s) for r in p.retrain_seeds for s in ground_truth_order(p) if _retrain_metrics(p, r, s) is None]
        reporter.log(f"ground truth: {len(p.reference)} reference subsets × {len(p.retrain_seeds)} retrain seeds, "
                     f"{len(todo)} retrains to go")
        busy = sum(retrained(p, r, parts, subset, reporter) is None for r, subset in todo)
        if busy:
            reporter.log(f"ground truth: {busy} retrains were running in other processes; re-run when they end to collect them")


# -- one seed -------------------------------------------------------------------------------------
def warmup_spec(p: Plan, seed: int) -> StudySpec:
    return p.spec(seed, study_name=f"{p.base.name}-warmup-seed{seed}")


def seed_supernet(p: Plan, seed: int, reporter: Reporter) -> tuple[Components, Warmup]:
    """The seed's components, their model in the state of the seed's shared warm-up (done once)."""
    loop.seed_everything(seed)
    spec = warmup_spec(p, seed)
    parts = build_components(spec)
    return parts, shared_warm_up(p, spec, parts, reporter)


def run_seed_once(p: Plan, seed: int, reporter: Reporter, work: Callable[[], Components]) -> Components | None:
    """``work()`` for one search seed while holding the seed's warm-up folder; None (and nothing done)
    when another process holds it or one of its searches: that process is running this seed."""
    try:
        with folder_lock(warmup_spec(p, seed).run_dir):
            return work()
    except FolderInUse:
        reporter.log(f"seed {seed}: running in another process; skipped here")
        return None


def _run_seed(p: Plan, seed: int, opened: OpenedStorage, reporter: Reporter) -> Components | None:
    parts = run_seed_once(p, seed, reporter, lambda: _seed_work(p, seed, opened, reporter))
    return parts if parts is not None else _retrain_beside(p, seed, reporter)


def _retrain_beside(p: Plan, seed: int, reporter: Reporter) -> Components | None:
    """Retrain the picks that another process's searches of ``seed`` have saved, from the last one back,
    while that process retrains them from the first: a seed's retrains then take two processes, not one."""
    picks = [frozenset(record.chosen) for m in reversed((*p.config.methods, *p.config.samplers)) if (record := saved_record(p, m, seed))]
    todo = [(s, r) for s in dict.fromkeys(picks) for r in reversed(p.retrain_seeds) if _retrain_metrics(p, r, s) is None]
    if not todo:
        return None
    parts = build_components(p.spec(seed))
    for skipped, r in todo:
        if (metrics := retrained(p, r, parts, skipped, reporter)) is not None:
            reporter.log(f"seed {seed}: retrained {sorted(skipped)} at retrain seed {r} beside the process that runs the seed: "
                         f"test {metrics.metric} {metrics.value:.4f}")
    return parts


def _seed_work(p: Plan, seed: int, opened: OpenedStorage, reporter: Reporter) -> Components:
    parts, warm = seed_supernet(p, seed, reporter)
    record_missing(p, seed, p.config.methods, SearchRecord, lambda method: _training_free(p, seed, method, parts, warm))
    record_missing(p, seed, p.config.samplers, SearchRecord, lambda sampler: _search(p, seed, sampler, parts, warm, opened, reporter))
    for method in (*p.config.methods, *p.config.samplers):
        chosen = frozenset(saved_record(p, method, seed).chosen)
        for r in p.retrain_seeds:
            metrics = retrained(p, r, parts, chosen, reporter)
            result = "running in another process" if metrics is None else f"test {metrics.metric} {metrics.value:.4f}"
            reporter.log(f"seed {seed}: {method} skips {sorted(chosen)} → retrain seed {r}: {result}")
    return parts


def shared_warm_up(p: Plan, spec: StudySpec, parts: Components, reporter: Reporter) -> Warmup:
    """The seed's shared warm-up (done once); the model is left in its warm state."""
    info_path = spec.run_dir / WARMUP_FILE
    if info_path.is_file():
        warm = Warmup.read(info_path)
    else:
        start = time.perf_counter()
        checkpoint = warm_up(spec, parts, reporter)
        seconds = time.perf_counter() - start
        load_warm(parts, str(checkpoint))
        warm = Warmup(checkpoint=str(checkpoint), steps=p.steps_per_epoch * spec.search.warmup_epochs, seconds=seconds,
                      supernet_losses=supernet_losses(p, parts))
        write_json(warm, info_path)
    load_warm(parts, warm.checkpoint)
    return warm


def load_warm(parts: Components, checkpoint: str) -> None:
    parts.model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"], strict=False)


def warm_layer_scores(p: Plan, method: str, parts: Components, warm: Warmup) -> tuple[dict[str, float], int, float]:
    """A training-free method's layer scores on the warm-up supernet, the batches it scored (0 for the
    position rules) and the seconds it took."""
    search = p.base.search
    load_warm(parts, warm.checkpoint)
    start = time.perf_counter()
    batches = sample_batches(parts.task, parts.model, search.batch_size, search.observation_batches)
    scores = layer_scores(method, p.space, parts.model, parts.task, batches)
    return scores, len(batches) if method in SIMILARITY_METHODS else 0, time.perf_counter() - start


def _training_free(p: Plan, seed: int, method: str, parts: Components, warm: Warmup) -> SearchRecord:
    """Layer scores on the warm-up supernet and the subset they pick."""
    scores, scored, seconds = warm_layer_scores(p, method, parts, warm)
    return SearchRecord(
        method=method, kind="training-free", seed=seed, study_name=None,
        chosen=p.space.ordered(p.space.top(scores)), layer_scores=scores, observations=0, observed=[], scoring_batches=scored,
        warmup_steps=warm.steps, warmup_seconds=warm.seconds, search_steps=0, search_seconds=seconds,
        supernet_losses=warm.supernet_losses,
    )


def _search(
    p: Plan, seed: int, sampler: str, parts: Components, warm: Warmup, opened: OpenedStorage, reporter: Reporter
) -> SearchRecord:
    """One sampler's search from the shared warm-up checkpoint (resumed if it was interrupted)."""
    method, options = sampler_of(sampler), None
    if method.prior:  # scored on the warm-up supernet, which is deterministic: a resumed search gets the same gates
        scores, _, _ = warm_layer_scores(p, method.prior, parts, warm)
        options = {"initial_gates": prior_gates(scores, method.prior_scale)}
    spec = p.spec(seed, sampler, options)
    with runner.exclusive(spec, opened):
        check_not_foreign(spec, opened)
        save_spec(spec)
        found = runner.search(spec, parts, reporter=reporter, storage=opened, warmup_checkpoint=Path(warm.checkpoint))
    complete = found.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return SearchRecord(  # a race's pick is its best trial that trained every step (runner.is_race), with no layer scores
        method=sampler, kind="sampler", seed=seed, study_name=spec.resolved_study_name,
        chosen=parts.space.ordered(found.chosen), layer_scores=found.found_by.probabilities,
        observations=len(complete), observed=[t.value for t in complete], scoring_batches=0,
        warmup_steps=warm.steps, warmup_seconds=warm.seconds,
        search_steps=search_steps(p, spec, found.study), search_seconds=found.found_by.search_seconds,
        supernet_losses=supernet_losses(p, parts),
    )


def search_steps(p: Plan, spec: StudySpec, study: optuna.Study) -> int:
    """Training steps a search took after the warm-up: the one-shot search's epochs on the supernet, or the steps
    every trial of a race trained (all of them, or until ASHA stopped it)."""
    if spec.search.executor != "ray":
        return p.steps_per_epoch * spec.search.search_epochs
    return sum(t.user_attrs.get(STEPS_ATTR) or 0 for t in study.get_trials(deepcopy=False))


def budget_spec(p: Plan, seed: int, steps: int) -> StudySpec:
    """A supernet of about ``steps`` training steps (whole epochs of the study's; random subnets drawn as
    ``search.warmup_draw`` says, which names its folder), in its own folder."""
    epochs = max(1, math.ceil(steps / p.steps_per_epoch))
    return p.spec(seed, study_name=f"{p.base.name}-{p.base.search.warmup_draw}{steps}-seed{seed}", **{"search.warmup_epochs": epochs})


def budget_losses_path(p: Plan, seed: int, steps: int) -> Path:
    return budget_spec(p, seed, steps).run_dir / LOSSES_FILE


def budget_supernet(p: Plan, seed: int, steps: int, reporter: Reporter) -> SupernetLosses | None:
    """Train (or resume) the seed's uniform supernet of ``steps`` and score every reference subset on the
    whole val split; None when another process holds it."""
    spec = budget_spec(p, seed, steps)
    path = spec.run_dir / LOSSES_FILE
    try:
        with folder_lock(spec.run_dir):
            if path.is_file():
                return SupernetLosses.read(path)
            loop.seed_everything(seed)
            parts = build_components(spec)
            start = time.perf_counter()
            load_warm(parts, str(warm_up(spec, parts, reporter)))
            losses = SupernetLosses(
                steps=p.steps_per_epoch * spec.search.warmup_epochs, seconds=0.0, split="val", losses=val_losses(p, parts)
            )
            losses.seconds = time.perf_counter() - start
            write_json(losses, path)
            return losses
    except FolderInUse:
        reporter.log(f"seed {seed}: the supernet of {steps} steps is trained in another process; skipped here")
        return None


def val_losses(p: Plan, parts: Components) -> dict[str, float]:
    """Every reference subset's mean loss over the whole val split (eval mode)."""
    batches = list(parts.task.loader("val", parts.model, p.base.search.batch_size))
    losses = {
        subset_key(p.space, subset): float(np.mean([loop.observe(parts.model, parts.task, b, subset) for b in batches]))
        for subset in p.reference
    }
    parts.model.set_skipped(())
    return losses


def supernet_losses(p: Plan, parts: Components) -> dict[str, float]:
    """The supernet's mean loss of every reference subset over the observation batches DAS scores on."""
    search = p.base.search
    batches = sample_batches(parts.task, parts.model, search.batch_size, search.observation_batches)
    losses = {
        subset_key(p.space, subset): float(np.mean([loop.observe(parts.model, parts.task, b, subset) for b in batches]))
        for subset in p.reference
    }
    parts.model.set_skipped(())
    return losses


# -- records and retrains on disk ------------------------------------------------------------------
def record_path(p: Plan, method: str, seed: int, size: int | None = None) -> Path:
    """``records/<method>-seed<k>.json``; a range's search of one size: ``<method>-skip<m>-seed<k>.json``."""
    name = f"{method}-seed{seed}" if size is None else f"{method}-skip{size}-seed{seed}"
    return p.out / "records" / f"{name}.json"


def saved_record(p: Plan, method: str, seed: int, kind: type[Record] = SearchRecord, size: int | None = None) -> Record | None:
    path = record_path(p, method, seed, size)
    return kind.read(path) if path.is_file() else None


def save_record(p: Plan, record: SearchRecord | LadderRecord, size: int | None = None) -> None:
    write_json(record, record_path(p, record.method, record.seed, size))  # atomic: a record exists whole or not at all


def record_missing(p: Plan, seed: int, methods: Iterable[str], kind: type[Record], find: Callable[[str], Record]) -> None:
    """``find(method)`` for every method that has no record at ``seed`` yet, each saved as soon as it is found."""
    for method in methods:
        if saved_record(p, method, seed, kind) is None:
            save_record(p, find(method))


def saved_records(p: Plan) -> list[SearchRecord]:
    """Every finished record of the config's methods, of any seed run into this folder, in method order."""
    methods = [*p.config.samplers, *p.config.methods]
    records = [SearchRecord.read(path) for path in sorted((p.out / "records").glob("*.json"))]
    records = [r for r in records if r.method in methods]
    return sorted(records, key=lambda r: (methods.index(r.method), r.seed))


def saved_warmups(p: Plan, seeds: list[int]) -> dict[int, Warmup]:
    found = {}
    for seed in seeds:
        path = p.spec(seed, study_name=f"{p.base.name}-warmup-seed{seed}").run_dir / WARMUP_FILE
        if path.is_file():
            found[seed] = Warmup.read(path)
    return found


def retrain_spec(p: Plan, seed: int, skipped: frozenset[str]) -> StudySpec:
    """``retrain/seed<r>/<subset>`` (the full model: ``none``); a range's retrain is of one size."""
    fields = {"num_skip": len(skipped) or min(p.space.sizes)} if p.space.is_range else {}
    return p.spec(
        seed, output_dir=str(p.out / "retrain" / f"seed{seed}"), study_name="+".join(p.space.ordered(skipped)) or "none", **fields
    )


def _retrain_metrics(p: Plan, seed: int, skipped: frozenset[str]) -> RetrainMetrics | None:
    """The metrics of a finished retrain of ``skipped`` at retrain seed ``seed``, else None; its weights
    may be absent (a committed benchmark carries metrics only)."""
    return finished_metrics(retrain_spec(p, seed, skipped), skipped, weights_required=False)


def retrained_values(p: Plan, skipped: frozenset[str]) -> list[RetrainMetrics] | None:
    """The metrics of ``skipped`` at every retrain seed, or None if any retrain is missing."""
    found = [_retrain_metrics(p, r, skipped) for r in p.retrain_seeds]
    return None if any(m is None for m in found) else found


def retrained(p: Plan, seed: int, parts: Components, skipped: frozenset[str], reporter: Reporter) -> RetrainMetrics | None:
    """The retrain metrics of ``skipped`` at retrain seed ``seed``: from an earlier retrain, else retrained
    now; None while another process (a second piece of the same benchmark) holds that retrain's folder."""
    spec = retrain_spec(p, seed, skipped)
    try:
        with folder_lock(spec.run_dir):
            done = _retrain_metrics(p, seed, skipped)
            if done is not None:
                return done
            save_spec(spec)
            reporter.log(f"retraining {subset_key(p.space, skipped) or 'the full model'} at retrain seed {seed} in {spec.run_dir}")
            return retrain(spec, parts, skipped, FoundBy(sampler=BENCH), reporter)
    except FolderInUse:
        return None


def check_not_foreign(spec: StudySpec, opened: OpenedStorage) -> None:
    """A study of this name that this benchmark did not start (e.g. one of ``das-tune run``) is not extended."""
    ours = (spec.run_dir / CHECKPOINT).is_file()
    if not ours and study_exists(opened.optuna, spec.resolved_study_name):
        raise UserError(
            f"study {spec.resolved_study_name!r} already exists in {opened.shown} but was not started by this "
            f"benchmark (no {spec.run_dir / CHECKPOINT}); pass another --storage or --out"
        )


SEARCH_FIELDS = ("sampler", "search", "ray")  # what the searches depend on; the retrains depend on the rest


def plan_document(p: Plan) -> str:
    """What the results in an output folder depend on: the bench's own settings, what every retrain depends
    on (``truth``) and what the searches depend on (``search``)."""
    settings = {"retrain_seeds": p.config.retrain_seeds, "reference": [subset_key(p.space, s) for s in p.reference]}
    spec = p.spec(0)
    study = {**spec.model_dump(), "retrain": spec.retrain.recorded(), "search": spec.search.recorded()}
    search = {name: study.pop(name) for name in SEARCH_FIELDS}
    return yaml.safe_dump({"bench": settings, "truth": study, "search": search}, sort_keys=True)


def check_same_plan(p: Plan) -> None:
    """An output folder holds one benchmark: re-runs and later pieces must declare the same one. Its search
    settings may change while no search that depends on them has started there (e.g. after a piece of ground
    truth only; the ``ray`` settings until a race has started)."""
    path = p.out / PLAN_FILE
    if not path.is_file():
        return
    held, resolved = yaml.safe_load(path.read_text()), yaml.safe_load(plan_document(p))
    if held.get("bench") != resolved["bench"] or held.get("truth") != resolved["truth"]:
        raise UserError(f"{p.out} holds a benchmark of another study, retrain budget or retrain seeds ({path}); pass another --out")
    changed = sorted(k for k in SEARCH_FIELDS if (held.get("search") or {}).get(k) != resolved["search"][k])
    if bound := [k for k in changed if searches_started(p, races_only=k == "ray")]:
        raise UserError(f"{p.out} holds searches with other {', '.join(bound)} settings ({path}); pass another --out")


def searches_started(p: Plan, races_only: bool = False) -> bool:
    """Whether any search or warm-up of this benchmark has written to its folder (``races_only``: any race,
    the only searches that depend on the ``ray`` settings)."""
    if races_only:
        return any(any((p.out / "records").glob(f"{race}-*.json")) or any((p.out / "runs").glob(f"*-{race}-seed*")) for race in RACES)
    return any((p.out / "records").glob("*.json")) or any((p.out / "runs").glob("*"))


def check_plan_file(p: Plan) -> None:
    """``check_same_plan``, then the plan is written."""
    check_same_plan(p)
    atomic.write_text(p.out / PLAN_FILE, plan_document(p))
