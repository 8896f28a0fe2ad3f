"""``das-tune bench --num-skip 1-3``: one search for a whole range of num_skip against one search per size.

Per search seed:

* every sampler searches the range once (``<study>-<sampler>-seed<k>``: two objectives, observed loss and
  additional GMACs) from one shared warm-up of the range's supernet; its pick for each size comes from its
  skip policy (DAS: the top-m gates, a ladder of nested subsets; the others: each size's best observed subset);
* ``das_per_size`` is the paper's procedure: one DAS search per size (``<study>-das_per_size-skip<m>-seed<k>``),
  each from its own warm-up of that size's supernet; its cost is the sum over the sizes;
* every training-free method scores the layers once on the range's warm-up supernet and picks the top-m
  scores for each size.

Every pick is retrained at each retrain seed into ``retrain/seed<r>/<subset>`` — the layout of a single-size
bench, so a ``retrain`` folder shared with ``bench/<space>-skip<m>`` reuses its ground truth — and the full model
once (``retrain/seed<r>/none``). A method's *retrained front* at a seed is the full model and its picks; its
hypervolume (metric up, additional GMACs down) is taken from the reference point (the lowest retrained metric
of any point in the results, 0 additional GMACs). Where every subset of a size is retrained, each pick of that
size also gets its percentile among them.

Layout under the output folder: ``bench.db``, ``plan.yaml``, ``records/<method>-seed<k>.json`` (and
``records/das_per_size-skip<m>-seed<k>.json``), ``runs/`` (warm-ups and searches, resumable), ``retrain/``.
"""

from __future__ import annotations

from pathlib import Path

from das_tune.artifacts.results import (
    CostRatio,
    LadderPick,
    LadderRecord,
    LadderResults,
    LadderRun,
    LadderSummary,
    PairedTest,
    Retrained,
    Warmup,
)
from das_tune.artifacts.run_folder import save_spec
from das_tune.bench import stats
from das_tune.bench.baselines import METHODS
from das_tune.bench.plots import plot_ladder
from das_tune.bench.report import fmt, markdown_lines, retrained_lookup, save, spread
from das_tune.bench.runs import (
    BenchConfig,
    Plan,
    check_not_foreign,
    check_plan_file,
    observation_rounds,
    record_missing,
    reference_subsets,
    retrained,
    run_seed_once,
    sampler_of,
    save_record,
    saved_record,
    seed_supernet,
    shared_warm_up,
    warm_layer_scores,
)
from das_tune.errors import UserError
from das_tune.jobs import runner
from das_tune.progress import Reporter
from das_tune.samplers import SINGLE_OBJECTIVE
from das_tune.search import ONESHOT
from das_tune.spec.study import StudySpec, load_study_spec
from das_tune.storage.opener import OpenedStorage
from das_tune.training import loop
from das_tune.training.components import Components, build_components, build_spec_task

PER_SIZE = "das_per_size"  # DAS searching each size of the range on its own (the paper's procedure)


# -- the plan -------------------------------------------------------------------------------------
def plan_ladder(config: BenchConfig) -> Plan:
    """Check a range benchmark before anything runs; bad input is one clear error."""
    base = load_study_spec(config.study, config.overrides)
    space = base.load_space()
    if not space.is_range:
        raise UserError(f"a ladder benchmark needs a range of num_skip (--set num_skip=1-3); space {space.label} skips {space.num_skip}")
    samplers = [s for s in config.samplers if s != PER_SIZE]
    unknown = [s for s in samplers if sampler_of(s) is None] + [m for m in config.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown sampler/method {unknown} (a range also takes {PER_SIZE}: DAS searching each size on its own)")
    priored = [s for s in samplers if sampler_of(s).prior]
    if priored:
        raise UserError(f"{priored}: a prior from training-free scores is benchmarked on one num_skip, not a range")
    single = [s for s in samplers if sampler_of(s).sampler in SINGLE_OBJECTIVE]
    if single:
        raise UserError(f"samplers {single} cannot search two objectives (observed loss, additional GMACs)")
    if not config.samplers and not config.methods:
        raise UserError("nothing to compare: give --samplers and/or --methods")
    if config.retrain_seeds < 1:
        raise UserError(f"--retrain-seeds: expected at least 1, got {config.retrain_seeds}")
    if base.search.executor != ONESHOT or base.search.warmup_epochs < 1:
        raise UserError("a ladder benchmark shares one warm-up per seed on the oneshot executor: expected "
                        "search.executor = oneshot and search.warmup_epochs ≥ 1")
    task = build_spec_task(base)
    steps = loop.steps_per_epoch(task, base.search.batch_size, base.search.max_steps_per_epoch)
    retrain_steps = loop.steps_per_epoch(task, base.retrain.batch_size, base.retrain.max_steps_per_epoch) * base.retrain.epochs
    observations = observation_rounds(base.search, steps) * base.search.round_size
    if observations == 0:
        raise UserError("the search budget has no observation round: raise search.search_epochs or lower search.observe_every")
    out = config.out or Path("bench") / f"{space.label}-skip{space.num_skip_label}{'-tiny' if base.tiny else ''}"
    url = config.overrides.get("storage") or f"sqlite:///{out / 'bench.db'}"
    return Plan(config, base, space, out, url, steps, retrain_steps, observations, (), ())


def _size_spec(p: Plan, seed: int, size: int, **fields) -> StudySpec:
    return p.spec(seed, "das", num_skip=size, **fields)


# -- running --------------------------------------------------------------------------------------
def execute(p: Plan, reporter: Reporter) -> None:
    """Every (method, seed) of the config, then every pick's retrains and the full model's."""
    opened = OpenedStorage.open(p.storage)
    check_plan_file(p)
    for seed in p.config.seeds:
        reporter.log(f"seed {seed}: one range search per sampler, {len(p.config.methods)} training-free methods")
        run_seed_once(p, seed, reporter, lambda: _seed_work(p, seed, opened, reporter))
    parts = build_components(p.spec(0))
    subsets = {frozenset()} | {frozenset(s) for r in saved_records(p) for s in r.picks.values()}
    busy = 0
    for subset in sorted(subsets, key=lambda s: (len(s), p.space.ordered(s))):
        for r in p.retrain_seeds:
            busy += retrained(p, r, parts, subset, reporter) is None
    if busy:
        reporter.log(f"{busy} retrains were running in other processes; re-run when they end to collect them")


def _seed_work(p: Plan, seed: int, opened: OpenedStorage, reporter: Reporter) -> Components:
    parts, warm = seed_supernet(p, seed, reporter)
    record_missing(p, seed, p.config.methods, LadderRecord, lambda method: _training_free(p, seed, method, parts, warm))
    ranged = [s for s in p.config.samplers if s != PER_SIZE]
    record_missing(p, seed, ranged, LadderRecord, lambda sampler: _range_search(p, seed, sampler, parts, warm, opened, reporter))
    if PER_SIZE in p.config.samplers:
        for size in p.space.sizes:
            if saved_record(p, PER_SIZE, seed, LadderRecord, size) is None:
                save_record(p, _size_search(p, seed, size, opened, reporter), size)
    return parts


def _training_free(p: Plan, seed: int, method: str, parts: Components, warm: Warmup) -> LadderRecord:
    scores, scored, seconds = warm_layer_scores(p, method, parts, warm)
    return LadderRecord(
        method=method, kind="training-free", seed=seed, studies=[],
        picks={str(m): p.space.ordered(p.space.top(scores, m)) for m in p.space.sizes},
        observations=0, scoring_batches=scored, steps=warm.steps, seconds=warm.seconds + seconds,
    )


def _range_search(
    p: Plan, seed: int, sampler: str, parts: Components, warm: Warmup, opened: OpenedStorage, reporter: Reporter
) -> LadderRecord:
    """One sampler's search of the whole range from the seed's shared warm-up (resumed if interrupted)."""
    spec = p.spec(seed, sampler)
    found = _search(spec, parts, opened, reporter, Path(warm.checkpoint))
    picks = found.policy.picks(found.study)
    return LadderRecord(
        method=sampler, kind="sampler", seed=seed, studies=[spec.resolved_study_name],
        picks={str(m): p.space.ordered(s) for m, s in sorted(picks.items())},
        observations=len(found.study.trials), scoring_batches=0,
        steps=warm.steps + p.steps_per_epoch * spec.search.search_epochs, seconds=warm.seconds + found.found_by.search_seconds,
    )


def _size_search(p: Plan, seed: int, size: int, opened: OpenedStorage, reporter: Reporter) -> LadderRecord:
    """DAS searching one size on its own, from its own warm-up of that size's supernet."""
    loop.seed_everything(seed)
    warm_spec = _size_spec(p, seed, size, study_name=f"{p.base.name}-warmup-skip{size}-seed{seed}")
    parts = build_components(warm_spec)
    warm = shared_warm_up(p, warm_spec, parts, reporter)
    spec = _size_spec(p, seed, size, study_name=f"{p.base.name}-{PER_SIZE}-skip{size}-seed{seed}")
    found = _search(spec, parts, opened, reporter, Path(warm.checkpoint))
    return LadderRecord(
        method=PER_SIZE, kind="sampler", seed=seed, studies=[spec.resolved_study_name],
        picks={str(size): parts.space.ordered(found.chosen)}, observations=len(found.study.trials), scoring_batches=0,
        steps=warm.steps + p.steps_per_epoch * spec.search.search_epochs, seconds=warm.seconds + found.found_by.search_seconds,
    )


def _search(
    spec: StudySpec, parts: Components, opened: OpenedStorage, reporter: Reporter, warm_checkpoint: Path
) -> runner.Searched:
    with runner.exclusive(spec, opened):
        check_not_foreign(spec, opened)
        save_spec(spec)
        return runner.search(spec, parts, reporter=reporter, storage=opened, warmup_checkpoint=warm_checkpoint)


# -- records on disk ------------------------------------------------------------------------------
def saved_records(p: Plan) -> list[LadderRecord]:
    """Every finished record, the per-size searches of a seed merged into one (once every size is done)."""
    methods = [*p.config.samplers, *p.config.methods]
    records = []
    for seed in sorted({int(path.stem.rsplit("seed", 1)[1]) for path in (p.out / "records").glob("*.json")}):
        for method in methods:
            if method != PER_SIZE:
                record = saved_record(p, method, seed, LadderRecord)
                records += [record] if record is not None else []
                continue
            per_size = [saved_record(p, PER_SIZE, seed, LadderRecord, m) for m in p.space.sizes]
            if all(per_size):
                records.append(per_size[0].model_copy(update={
                    "studies": [s for r in per_size for s in r.studies], "picks": {k: v for r in per_size for k, v in r.picks.items()},
                    "observations": sum(r.observations for r in per_size),
                    "steps": sum(r.steps for r in per_size), "seconds": sum(r.seconds for r in per_size),
                }))
    return sorted(records, key=lambda r: (methods.index(r.method), r.seed))


# -- the results ----------------------------------------------------------------------------------
def collect(p: Plan) -> LadderResults:
    """The results of everything finished in ``p.out``: every run with a retrained front, the summary per
    method, and per size the paired test of each method's pick against ``das``'s."""
    result = retrained_lookup(p)
    full = result(frozenset())
    truths = {m: _size_truth(p, m, result) for m in p.space.sizes}
    warnings, fronts = [], []
    for record in saved_records(p):
        picks = {int(m): result(frozenset(s)) for m, s in record.picks.items()}
        if full is None or any(r is None for r in picks.values()):
            warnings.append(f"{record.method} seed {record.seed}: not every pick is retrained yet (run the same command again)")
            continue
        fronts.append((record, picks))
    floor = min([full.mean, *(r.mean for _, picks in fronts for r in picks.values())]) if full is not None else None
    runs = [_run(p, record, picks, full, floor, truths) for record, picks in fronts]
    methods = [m for m in (*p.config.samplers, *p.config.methods) if any(r.method == m for r in runs)]
    return LadderResults(
        study=p.base.name, space=p.space.name, candidates=list(p.space.candidates), sizes=list(p.space.sizes),
        metric=full.metric if full is not None else "", seeds=sorted({r.seed for r in runs}), methods=methods, reference=p.config.reference,
        storage=p.storage, tiny=p.base.tiny, observations=p.observations, steps_per_epoch=p.steps_per_epoch,
        retrain_seeds=list(p.retrain_seeds), full=full, hypervolume_reference=floor,
        ground_truth_sizes=[m for m, t in truths.items() if t is not None],
        summary={m: _summary(p, [r for r in runs if r.method == m]) for m in methods},
        paired_tests=_paired_tests(p, runs, methods), cost_ratio=_cost_ratio(runs, p.config.reference), warnings=warnings, runs=runs,
    )


def _size_truth(p: Plan, size: int, result) -> list[float] | None:
    """Every subset of ``size``'s retrained means, if all are retrained (a single-size bench's ground truth)."""
    space = p.space.with_size(size)
    values = [result(s) for s in reference_subsets(space, space.num_subsets)]
    return None if any(v is None for v in values) else [v.mean for v in values]


def _run(p: Plan, record: LadderRecord, picks: dict[int, Retrained], full: Retrained, floor: float, truths) -> LadderRun:
    points = [
        LadderPick(num_skip=m, skipped=record.picks[str(m)], value=r.mean, retrained=r.values, additional_gmacs=r.additional_gmacs,
                   flops_saved=r.flops_saved, percentile=stats.percentile(truths[m], r.mean) if truths[m] else None)
        for m, r in sorted(picks.items())
    ]
    front = [(full.mean, full.additional_gmacs), *((q.value, q.additional_gmacs) for q in points)]
    return LadderRun(**record.model_dump(), picks_retrained=points, hypervolume=stats.hypervolume_2d(front, (floor, 0.0)))


def _summary(p: Plan, runs: list[LadderRun]) -> LadderSummary:
    return LadderSummary(
        hypervolume=spread([r.hypervolume for r in runs]), steps=spread([r.steps for r in runs]),
        seconds=spread([r.seconds for r in runs]),
        value={str(m): spread([q.value for r in runs for q in r.picks_retrained if q.num_skip == m]) for m in p.space.sizes},
        percentile={str(m): spread([q.percentile for r in runs for q in r.picks_retrained if q.num_skip == m]) for m in p.space.sizes},
    )


def _paired_tests(p: Plan, runs: list[LadderRun], methods: list[str]) -> dict[str, dict[str, PairedTest]]:
    """Per method other than the reference (``das``) and per size (and ``hypervolume``): reference − method,
    paired by seed."""
    ref = p.config.reference
    if ref not in methods:
        return {}
    by = {(r.method, r.seed): r for r in runs}
    tests = {}
    for method in (m for m in methods if m != ref):
        seeds = [s for (m, s) in by if m == method and (ref, s) in by]
        per = {}
        for size in p.space.sizes:
            pairs = [(_value(by[ref, s], size), _value(by[method, s], size)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            per[str(size)] = PairedTest(**stats.paired_test([a for a, _ in pairs], [b for _, b in pairs]))
        per["hypervolume"] = PairedTest(
            **stats.paired_test([by[ref, s].hypervolume for s in seeds], [by[method, s].hypervolume for s in seeds])
        )
        tests[method] = per
    return tests


def _value(run: LadderRun, size: int) -> float | None:
    return next((q.value for q in run.picks_retrained if q.num_skip == size), None)


def _cost_ratio(runs: list[LadderRun], reference: str) -> CostRatio | None:
    """The one range search of the reference (``das``) against a single-size search of ``das_per_size`` (its cost over the
    sizes), median over the seeds that ran both: in training steps and in wall-clock."""
    ladder = {r.seed: r for r in runs if r.method == reference}
    per_size = {r.seed: r for r in runs if r.method == PER_SIZE}
    seeds = sorted(set(ladder) & set(per_size))
    if not seeds:
        return None
    sizes = len(per_size[seeds[0]].picks)
    steps = stats.spread([ladder[s].steps / (per_size[s].steps / sizes) for s in seeds])["median"]
    seconds = stats.spread([ladder[s].seconds / (per_size[s].seconds / sizes) for s in seeds])["median"]
    return CostRatio(steps=steps, seconds=seconds, seeds=len(seeds))


def markdown(results: LadderResults) -> str:
    """The results as markdown: per method the retrained value of each size's pick, the hypervolume and the cost."""
    sizes = [str(m) for m in results.sizes]
    header = ["method", *(f"skip {m}" for m in sizes), "hypervolume", "steps", "wall s", f"Δ hypervolume vs {results.reference}"]
    rows = []
    for method, s in results.summary.items():
        test = results.paired_tests.get(method, {}).get("hypervolume")
        vs = "reference" if method == results.reference else (f"{fmt(test.mean_diff)}, p={fmt(test.p_value)} ({test.n})" if test else "—")
        rows.append([method, *(fmt(s.value[m].median) for m in sizes), fmt(s.hypervolume.median), fmt(s.steps.median),
                     fmt(s.seconds.median), vs])
    lines = [f"# Ladder benchmark: {results.study}, num_skip {'-'.join([sizes[0], sizes[-1]])}", "",
             f"Seeds {', '.join(map(str, results.seeds))}; medians over seeds of the retrained test {results.metric} "
             f"(mean over retrain seeds {', '.join(map(str, results.retrain_seeds))}).", "", *markdown_lines(header, rows)]
    if results.cost_ratio is not None:
        lines += ["", f"One range search costs {fmt(results.cost_ratio.steps)}× a single-size search in training steps and "
                      f"{fmt(results.cost_ratio.seconds)}× in wall-clock (median over {results.cost_ratio.seeds} seeds)."]
    return "\n".join(lines) + "\n"


def run_ladder(config: BenchConfig, reporter: Reporter | None = None) -> LadderResults:
    p = plan_ladder(config)
    reporter = reporter or Reporter()
    execute(p, reporter)
    results = collect(p)
    names = [plot_ladder(results, p.out)] if results.runs else []
    save(results, p.out, markdown(results), names)
    return results


__all__ = ["PER_SIZE", "collect", "execute", "plan_ladder", "run_ladder"]
