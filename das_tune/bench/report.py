"""The benchmark's results: the typed document gathered from the output folder, and the markdown and rich
tables drawn from it.

Every number in ``results.md`` and in the terminal table is a value of ``results.json`` printed with
:func:`fmt`, so the tables can be checked against the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from statistics import mean, median, pstdev
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from das_tune.artifacts import atomic
from das_tune.artifacts.results import (
    BenchFiles,
    BenchResults,
    Budget,
    BudgetRanking,
    GoalCheck,
    GoodCount,
    GroundTruth,
    LadderResults,
    MethodSummary,
    PairedTest,
    RaceBudget,
    Ranking,
    Retrained,
    RetrainMetrics,
    RunResult,
    SearchRecord,
    Spread,
    SupernetLosses,
    Verdict,
    write_json,
)
from das_tune.bench import stats
from das_tune.bench.runs import (
    RACES,
    REFERENCE_SEED,
    Plan,
    SupernetBudget,
    budget_losses_path,
    retrained_values,
    saved_records,
    saved_warmups,
    subset_key,
)
from das_tune.tasks.base import metric_by_group

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
BUDGETS_CAPTION = (
    "{supernets} trained for a budget, each reference subset's loss on the whole val split against the ground truth "
    "(medians over seeds; sparse τ leaves out the pairs within the good set's width; AUC: the chance a good-set subset has "
    "the lower loss; top-k recall of the best three{ensembles}):"
)
SUPERNETS_BY_DRAW = {"uniform": "Uniform supernets", "balanced": "Supernets of balanced draws (every candidate skipped equally often)"}
ENSEMBLE_CAPTION = (
    "; N × S: each subset's mean loss over N supernets of S steps trained at different seeds, a budget of N × S steps, "
    "its medians over groups of consecutive seeds"
)
RANKABLE = 5.0  # a space is rankable when its best subset is this many retrain-noise sd above its median one
GOOD_GOAL = 0.8  # the reference method's pick is in the good set at this share of seeds or more
SIGNIFICANT = 0.05
AHEAD_OF = ("random",)  # the reference method must beat these (p < SIGNIFICANT) …
NO_WORSE_THAN = ("last_k", "block_influence")  # … and not lose to these (p < SIGNIFICANT)


def save(results: BenchResults | LadderResults, out: Path, markdown_text: str, plots: list[str]) -> None:
    """``results.json`` (naming its files) and ``results.md`` into ``out``, each atomically."""
    results.files = BenchFiles(out=str(out), json_name=RESULTS_JSON, markdown=RESULTS_MD, plots=plots)
    write_json(results, out / RESULTS_JSON)
    atomic.write_text(out / RESULTS_MD, markdown_text)


def fmt(value: Any) -> str:
    """How every number is printed in the tables."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


# -- the results document -------------------------------------------------------------------------
def collect(p: Plan) -> BenchResults:
    """The results of everything finished in ``p.out`` for the config's methods, all seeds run so far."""
    retrained = retrained_lookup(p)
    truth = _ground_truth(p, {subset_key(p.space, s): retrained(s) for s in p.reference})
    runs, left_out = complete_seed_runs(p, retrained, truth)
    warnings = [*p.warnings, *left_out]
    methods = [m for m in (*p.config.samplers, *p.config.methods) if any(r.method == m for r in runs)]
    reference = p.config.reference if p.config.reference in methods or not methods else methods[0]
    seeds = sorted({r.seed for r in runs})
    summary = {m: _summary([r for r in runs if r.method == m]) for m in methods}
    paired = {m: _paired(runs, reference, m) for m in methods if m != reference}
    return BenchResults(
        study=p.base.name, space=p.space.label, candidates=list(p.space.candidates), num_candidates=len(p.space.candidates),
        num_skip=p.space.num_skip, num_subsets=p.space.num_subsets, top_percent=stats.TOP_PERCENT,
        metric=runs[0].metric if runs else (next(iter(truth.subsets.values())).metric if truth else ""),
        seeds=seeds, samplers=[m for m in p.config.samplers if m in methods], methods=[m for m in p.config.methods if m in methods],
        reference=reference, storage=p.storage, tiny=p.base.tiny, budget=_budget(p), warnings=warnings,
        summary=summary, paired_tests=paired, verdict=verdict(runs, truth, reference, paired),
        ground_truth=truth, warmup_ranking=_warmup_ranking(p, seeds, truth), runs=runs,
        supernet_budgets=_budget_rankings(p, truth),
    )


def _budget_rankings(p: Plan, truth: GroundTruth | None) -> dict[str, BudgetRanking]:
    """Per measured budget, over the seeds whose supernet of that budget is scored (an ensemble of N: over
    consecutive groups of N of those seeds, each subset scored by its mean loss in the group)."""
    found = {}
    for budget in p.config.supernet_budgets:
        paths = {seed: budget_losses_path(p, seed, budget.steps) for seed in p.supernet_seeds}
        saved = {seed: SupernetLosses.read(path) for seed, path in sorted(paths.items()) if path.is_file()}
        seeds = list(saved)[: len(saved) // budget.supernets * budget.supernets]
        groups = [seeds[i : i + budget.supernets] for i in range(0, len(seeds), budget.supernets)]
        rankings = [supernet_ranking(mean_losses([saved[s].losses for s in group]), truth) for group in groups]
        values = [r for r in rankings if r is not None]
        if not values:
            continue
        trained = SupernetBudget(saved[seeds[0]].steps, budget.supernets)  # whole epochs: maybe more than asked
        found[trained.label] = BudgetRanking(
            steps=trained.steps, supernets=trained.supernets, retrains=trained.steps * trained.supernets / p.retrain_steps, seeds=seeds,
            kendall_tau=spread([r.kendall_tau for r in values]), sparse_kendall_tau=spread([r.sparse_kendall_tau for r in values]),
            separation_auc=spread([r.separation_auc for r in values]), top3_recall=spread([r.top3_recall for r in values]),
        )
    return found


def mean_losses(losses: list[dict[str, float]]) -> dict[str, float]:
    """Each subset's mean loss over supernets (the subsets every one of them scored)."""
    keys = set.intersection(*(set(one) for one in losses))
    return {k: mean(one[k] for one in losses) for k in losses[0] if k in keys}


def complete_seed_runs(
    p: Plan, retrained: Callable[[frozenset[str]], Retrained | None], truth: GroundTruth | None
) -> tuple[list[RunResult], list[str]]:
    """The runs of the seeds at which every method has searched and its pick is retrained, and a warning for
    each other seed: the methods are compared on the same seeds, so a seed stopped part-way is left out whole."""
    methods = [*p.config.samplers, *p.config.methods]
    by_seed: dict[int, dict[str, SearchRecord]] = {}
    for record in saved_records(p):
        by_seed.setdefault(record.seed, {})[record.method] = record
    runs, warnings = [], []
    for seed, records in sorted(by_seed.items()):
        missing = [m for m in methods if m not in records or retrained(frozenset(records[m].chosen)) is None]
        if missing:
            warnings.append(f"seed {seed}: left out, {', '.join(missing)} not searched or retrained yet (run that seed again)")
            continue
        runs += [_run_result(records[m], retrained(frozenset(records[m].chosen)), truth) for m in methods]
    return sorted(runs, key=lambda r: (methods.index(r.method), r.seed)), warnings


def retrained_lookup(p: Plan) -> Callable[[frozenset[str]], Retrained | None]:
    """A subset → its retrains at every retrain seed in ``p.out`` (None while any is missing), each read once."""

    @cache
    def retrained(subset: frozenset[str]) -> Retrained | None:
        found = retrained_values(p, subset)
        return None if found is None else retrained_result(p, found)

    return retrained


def retrained_result(p: Plan, found: list[RetrainMetrics]) -> Retrained:
    values, metric = [m.value for m in found], found[0].metric
    groups = [metric_by_group(m.test, metric) for m in found]
    return Retrained(
        metric=metric, values={str(r): m.value for r, m in zip(p.retrain_seeds, found)}, mean=mean(values), std=pstdev(values),
        by_group={g: mean(gs[g] for gs in groups) for g in groups[0] if all(g in gs for gs in groups)},
        additional_gmacs=found[0].additional_gmacs, flops_saved=found[0].flops_saved,
        steps=p.retrain_steps, seconds=mean(m.retrain_seconds for m in found),
    )


def _ground_truth(p: Plan, subsets: dict[str, Retrained | None]) -> GroundTruth | None:
    """The reference subsets' retrains, once every one of them is finished."""
    if any(r is None for r in subsets.values()):
        return None
    values = [r.mean for r in subsets.values()]
    noise = median(r.std for r in subsets.values())
    return GroundTruth(
        kind=p.reference_kind, retrain_seeds=list(p.retrain_seeds),
        sample_seed=REFERENCE_SEED if p.reference_kind == "sample" else None, subsets=subsets,
        noise_std=noise, best=max(values), median=median(values),
        rankable=(max(values) - median(values)) / noise if noise > 0 else None, rankable_goal=RANKABLE,
        good_set=sorted(stats.good_set({k: r.mean for k, r in subsets.items()}, noise, stats.GOOD_WIDTH)), good_width=stats.GOOD_WIDTH,
        collapses=sum(stats.collapses(list(r.values.values())) for r in subsets.values()), collapse_margin=stats.COLLAPSE,
        top10_threshold=stats.top10_threshold(values),
        retrains=len(subsets) * len(p.retrain_seeds), retrain_seconds=sum(r.seconds * len(r.values) for r in subsets.values()),
    )


def _run_result(record: SearchRecord, pick: Retrained, truth: GroundTruth | None) -> RunResult:
    fields: dict[str, Any] = {}
    if truth is not None:
        reference = [r.mean for r in truth.subsets.values()]
        fields = {
            "regret": stats.regret(reference, pick.mean), "percentile": stats.percentile(reference, pick.mean),
            "top10": stats.in_top10(reference, pick.mean), "good": pick.mean >= truth.best - stats.GOOD_WIDTH * truth.noise_std,
            "kendall_tau": _layer_score_tau(record, truth), "supernet_ranking": supernet_ranking(record.supernet_losses, truth),
        }
    return RunResult(
        **record.model_dump(), metric=pick.metric, value=pick.mean, retrained=pick.values,
        additional_gmacs=pick.additional_gmacs, flops_saved=pick.flops_saved,
        retrain_steps=pick.steps, retrain_seconds=pick.seconds,
        cost_steps=record.warmup_steps + record.search_steps + pick.steps,
        cost_seconds=record.warmup_seconds + record.search_seconds + pick.seconds, **fields,
    )


def _layer_score_tau(record: SearchRecord, truth: GroundTruth) -> float | None:
    """Kendall τ between a method's subset scores (sum of its layer scores) and the ground truth."""
    if not record.layer_scores:
        return None
    keys = list(truth.subsets)
    scores = [sum(record.layer_scores[layer] for layer in key.split(",")) for key in keys]
    return stats.kendall_tau(scores, [truth.subsets[k].mean for k in keys])


def supernet_ranking(losses: dict[str, float], truth: GroundTruth | None) -> Ranking | None:
    """How well a supernet's loss ranks the reference subsets against their retrained metric (low loss ~ high metric)."""
    keys = [k for k in truth.subsets if k in losses] if truth is not None else []
    if len(keys) < 2:
        return None
    scores, values = [-losses[k] for k in keys], [truth.subsets[k].mean for k in keys]
    good = stats.good_set(dict(zip(keys, values)), truth.noise_std, stats.GOOD_WIDTH)
    return Ranking(
        kendall_tau=stats.kendall_tau(scores, values), spearman_rho=stats.spearman_rho(scores, values), n=len(keys),
        sparse_kendall_tau=stats.sparse_kendall_tau(scores, values, tie=stats.GOOD_WIDTH * truth.noise_std),
        separation_auc=stats.separation_auc(scores, [k in good for k in keys]), top3_recall=stats.top_k_recall(scores, values, 3),
        top_in_good=stats.top_in_good(scores, [k in good for k in keys]),
    )


def _warmup_ranking(p: Plan, seeds: list[int], truth: GroundTruth | None) -> dict[str, Ranking]:
    rankings = {str(seed): supernet_ranking(w.supernet_losses, truth) for seed, w in saved_warmups(p, seeds).items()}
    return {seed: r for seed, r in rankings.items() if r is not None}


def _race_budget(p: Plan) -> RaceBudget | None:
    """The ``ray`` settings a race of this bench runs with (its own study's: the race sets the scheduler)."""
    races = [m for m in p.config.samplers if m in RACES]
    if not races:
        return None
    ray = p.spec(p.config.seeds[0], races[0]).ray
    return RaceBudget(num_trials=ray.num_trials, steps_per_trial=ray.steps_per_trial, report_every=ray.report_every,
                      scheduler=ray.scheduler, grace_period=ray.grace_period)


def _budget(p: Plan) -> Budget:
    s = p.base.search
    return Budget(
        warmup_epochs=s.warmup_epochs, warmup_draw=s.warmup_draw, search_epochs=s.search_epochs, steps_per_epoch=p.steps_per_epoch,
        observe_every=s.observe_every, round_size=s.round_size, observation_batches=s.observation_batches,
        observations=p.observations, retrain_epochs=p.base.retrain.epochs, retrain_seeds=list(p.retrain_seeds),
        race=_race_budget(p),
    )


def spread(values: list[float | None]) -> Spread:
    return Spread(**stats.spread(values))


def _summary(runs: list[RunResult]) -> MethodSummary:
    judged = [r.top10 for r in runs if r.top10 is not None]
    good = [r.good for r in runs if r.good is not None]
    nets = [r.supernet_ranking for r in runs]
    return MethodSummary(
        good_share=sum(good) / len(good) if good else None,
        supernet_sparse_tau=spread([n.sparse_kendall_tau if n else None for n in nets]),
        supernet_auc=spread([n.separation_auc if n else None for n in nets]),
        value=spread([r.value for r in runs]), additional_gmacs=spread([r.additional_gmacs for r in runs]),
        regret=spread([r.regret for r in runs]), percentile=spread([r.percentile for r in runs]),
        top10_share=sum(judged) / len(judged) if judged else None,
        kendall_tau=spread([r.kendall_tau for r in runs]),
        supernet_kendall_tau=spread([r.supernet_ranking.kendall_tau if r.supernet_ranking else None for r in runs]),
        observations=spread([r.observations for r in runs]), cost_steps=spread([r.cost_steps for r in runs]),
        cost_seconds=spread([r.cost_seconds for r in runs]), search_seconds=spread([r.search_seconds for r in runs]),
        retrain_seconds=spread([r.retrain_seconds for r in runs]),
    )


def verdict(runs: list[RunResult], truth: GroundTruth | None, reference: str, paired: dict[str, PairedTest]) -> Verdict | None:
    """The goals of the reference method: its pick in the good set at ≥ 80 % of the seeds, ahead of random search
    (p < 0.05), not behind last-k or Block Influence (p < 0.05); None without a ground truth whose noise is known."""
    if truth is None or truth.rankable is None or not runs:
        return None
    judged = [r for r in runs if r.good is not None]
    methods = dict.fromkeys(r.method for r in judged)
    counts = {m: GoodCount(good=sum(r.good for r in judged if r.method == m), seeds=sum(r.method == m for r in judged)) for m in methods}
    goals = []
    if (own := counts.get(reference)) is not None:
        need = math.ceil(GOOD_GOAL * own.seeds)
        goals.append(GoalCheck(kind="good_set", target=need, met=own.good >= need))
    for kind, others in (("ahead_of", AHEAD_OF), ("not_behind", NO_WORSE_THAN)):
        for other in others:
            if (t := paired.get(other)) is not None:
                met = _significant(t, ahead=True) if kind == "ahead_of" else not _significant(t, ahead=False)
                goals.append(GoalCheck(kind=kind, other=other, target=SIGNIFICANT, met=met, mean_diff=t.mean_diff, p_value=t.p_value))
    nets = [r.supernet_ranking.top_in_good for r in runs if r.method == reference and r.supernet_ranking]
    nets = [good for good in nets if good is not None]
    return Verdict(rankable=truth.rankable >= truth.rankable_goal, good_counts=counts, reference=reference, goals=goals,
                   supernet_picks=GoodCount(good=sum(nets), seeds=len(nets)) if nets else None)


def _significant(test: PairedTest, ahead: bool) -> bool:
    """Whether ``reference − other`` is significantly above 0 (``ahead``) or below it."""
    if test.mean_diff is None or test.p_value is None or test.p_value >= SIGNIFICANT:
        return False
    return test.mean_diff > 0 if ahead else test.mean_diff < 0


def _paired(runs: list[RunResult], reference: str, other: str) -> PairedTest:
    """``reference`` − ``other`` on the retrained metric, paired by seed; a deterministic ``other`` (one pick at
    every seed) through its pick's retrain values instead, as ten copies of one pair would overstate."""
    ref = {r.seed: r.value for r in runs if r.method == reference}
    oth = {r.seed: r for r in runs if r.method == other}
    seeds = sorted(ref.keys() & oth.keys())
    if len(seeds) > 1 and len({tuple(oth[s].chosen) for s in seeds}) == 1:
        return PairedTest(**stats.unpaired_test([ref[s] for s in seeds], list(oth[seeds[0]].retrained.values())))
    return PairedTest(**stats.paired_test([ref[s] for s in seeds], [oth[s].value for s in seeds]))


# -- tables ---------------------------------------------------------------------------------------
def _cell(s: Spread, detail: str = "full") -> str:
    """``full``: median [quartiles] (min–max); ``median``: the median alone."""
    if s.n == 0:
        return "—"
    if s.n == 1 or s.min == s.max or detail == "median":
        return fmt(s.median)
    return f"{fmt(s.median)} [{fmt(s.q25)}, {fmt(s.q75)}] ({fmt(s.min)}–{fmt(s.max)})"


def summary_table(results: BenchResults, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per method, median [IQR] (min–max) over seeds, and the paired test; ``compact``
    (the terminal) shows medians only, and no counts of observations and steps."""
    truth = results.ground_truth is not None
    top = fmt(results.top_percent)
    columns = [("value", f"test {results.metric}", results.metric), ("additional_gmacs", "additional GMACs", "GMACs")]
    if truth:
        columns += [("regret", "regret", "regret"), ("percentile", "percentile", "pct"),
                    ("top10_share", f"top {top} % share", f"top {top} %"), ("good_share", "good-set share", "good"),
                    ("kendall_tau", "Kendall τ (layer scores)", "τ"), ("supernet_kendall_tau", "Kendall τ (supernet loss)", "τ net"),
                    ("supernet_sparse_tau", "sparse τ (supernet loss)", "sτ net"), ("supernet_auc", "AUC (supernet loss)", "AUC net")]
    columns += [("cost_seconds", "wall-clock s", "wall s")] if compact else [
        ("observations", "observations", ""), ("cost_steps", "training steps", ""), ("cost_seconds", "wall-clock s", "")]
    ref = results.reference
    paired_name = f"Δ vs {ref}" if compact else f"{ref} − method: mean Δ, p (n)"
    header = ["method", *(short if compact else long for _, long, short in columns), paired_name]
    detail = "median" if compact else "full"
    rows = []
    for method, summary in results.summary.items():
        cells = []
        for name, _, _ in columns:
            value = getattr(summary, name)
            cells.append(fmt(value) if not isinstance(value, Spread) else _cell(value, detail))
        test = results.paired_tests.get(method)
        equals = "=" if compact else " = "
        paired = "reference" if test is None else f"{fmt(test.mean_diff)}, p{equals}{fmt(test.p_value)} ({fmt(test.n)})"
        rows.append([method, *cells, paired])
    return header, rows


def runs_table(results: BenchResults) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seed", "skipped", f"test {results.metric}", "additional GMACs", "observations",
              "training steps", "search s", "retrain s"]
    truth = results.ground_truth is not None
    if truth:
        header += ["regret", "percentile", f"top {fmt(results.top_percent)} %", "Kendall τ", "supernet τ"]
    rows = []
    for r in results.runs:
        row = [r.method, fmt(r.seed), ", ".join(r.chosen), fmt(r.value), fmt(r.additional_gmacs),
               fmt(r.observations), fmt(r.cost_steps), fmt(r.search_seconds), fmt(r.retrain_seconds)]
        if truth:
            net = r.supernet_ranking.kendall_tau if r.supernet_ranking else None
            row += [fmt(r.regret), fmt(r.percentile), "yes" if r.top10 else "no", fmt(r.kendall_tau), fmt(net)]
        rows.append(row)
    return header, rows


def budgets_caption(results: BenchResults) -> str:
    ensembles = any(b.supernets > 1 for b in results.supernet_budgets.values())
    supernets = SUPERNETS_BY_DRAW[results.budget.warmup_draw]
    return BUDGETS_CAPTION.format(supernets=supernets, ensembles=ENSEMBLE_CAPTION if ensembles else "")


def budget_table(results: BenchResults) -> tuple[list[str], list[list[str]]]:
    header = ["supernet steps", "× one retrain", "seeds", "Kendall τ", "sparse τ", "AUC", "top-3 recall"]
    rows = [[_budget_label(b), fmt(b.retrains), fmt(len(b.seeds)), _cell(b.kendall_tau, "median"), _cell(b.sparse_kendall_tau, "median"),
             _cell(b.separation_auc, "median"), _cell(b.top3_recall, "median")] for b in results.supernet_budgets.values()]
    return header, rows


def _budget_label(b: BudgetRanking) -> str:
    return fmt(b.steps) if b.supernets == 1 else f"{fmt(b.supernets)} × {fmt(b.steps)} (mean loss)"


def truth_table(results: BenchResults) -> tuple[list[str], list[list[str]]]:
    """Every reference subset's retrains, best first; with the mean by target group where the task reports one
    (retrains written before groups were reported show —)."""
    gt = results.ground_truth
    groups = list(dict.fromkeys(g for r in gt.subsets.values() for g in r.by_group))
    header = ["skipped", f"mean test {results.metric}", *(f"retrain seed {s}" for s in gt.retrain_seeds), "std",
              *(f"mean {g}" for g in groups), "additional GMACs"]
    order = sorted(gt.subsets, key=lambda k: -gt.subsets[k].mean)
    rows = [[k.replace(",", ", "), fmt(r.mean), *(fmt(r.values[str(s)]) for s in gt.retrain_seeds), fmt(r.std),
             *(fmt(r.by_group.get(g)) for g in groups), fmt(r.additional_gmacs)] for k, r in ((k, gt.subsets[k]) for k in order)]
    return header, rows


def race_line(race: RaceBudget) -> str:
    return (f"The race ({', '.join(RACES)}) starts from the same warm-up: {fmt(race.num_trials)} distinct subsets, each trained "
            f"up to {fmt(race.steps_per_trial)} steps and reporting its observation loss every {fmt(race.report_every)} "
            f"steps, while {race.scheduler.upper()} stops the worse ones (grace period {fmt(race.grace_period)} reports); "
            "it observes nothing on the supernet: its observations column counts the trials that trained every step.")


def markdown(results: BenchResults, plots: list[str]) -> str:
    if not results.runs:
        return _truth_markdown(results)
    b = results.budget
    lines = [
        f"# das-tune bench: {results.study} on {results.space}",
        "",
        f"Skip {fmt(results.num_skip)} of {fmt(results.num_candidates)} candidates ({fmt(results.num_subsets)} subsets). "
        f"Seeds: {', '.join(fmt(s) for s in results.seeds)}. Every run: {fmt(b.warmup_epochs)} shared warm-up epoch(s) of "
        f"{fmt(b.steps_per_epoch)} steps; samplers then search {fmt(b.search_epochs)} epoch(s) on the same supernet, observing "
        f"{fmt(b.round_size)} subsets every {fmt(b.observe_every)} steps ({fmt(b.observations)} observations); every pick is "
        f"retrained for {fmt(b.retrain_epochs)} epoch(s) at each of the retrain seeds {', '.join(fmt(s) for s in b.retrain_seeds)} "
        "and its result is their mean.",
        *([] if b.race is None else ["", race_line(b.race)]),
        "",
        "Cells: median [quartiles] (min–max) over seeds. Training steps and wall-clock: the shared warm-up, the search "
        "and one retrain. Paired test: sign-flip permutation on the retrained metric, paired by seed (exact, or a seeded "
        "Monte Carlo sample of the sign patterns where many pairs differ: each test's name says which).",
    ]
    lines += ["", *(f"**Warning:** {w}" for w in results.warnings)] if results.warnings else []
    gt, top = results.ground_truth, fmt(results.top_percent)
    if gt is not None:
        what = "every subset" if gt.kind == "all" else f"a random reference sample of {fmt(len(gt.subsets))} subsets"
        lines += ["", f"Ground truth: {what}, retrained the same way. Regret: best reference subset − pick; percentile: "
                  f"share of reference subsets the pick is at least as good as; top {top} %: fewer than {top} % of them beat it "
                  f"(the threshold is {fmt(gt.top10_threshold)}). Kendall τ: a method's subset scores (sum of its layer "
                  "scores) against the ground truth, and the final supernet's loss of each reference subset against it."]
    lines += ["", "## Summary", "", *verdict_lines(results), "", *markdown_lines(*summary_table(results))]
    lines += ["", "## Runs", "", *markdown_lines(*runs_table(results))]
    if gt is not None:
        lines += ["", "## Ground truth", "", truth_line(gt), "", rankable_line(gt), ""]
        if results.warmup_ranking:
            lines += ["Warm-up supernet's loss against the ground truth, per seed: " + "; ".join(
                f"seed {s}: Kendall τ {fmt(r.kendall_tau)}, Spearman ρ {fmt(r.spearman_rho)}"
                for s, r in results.warmup_ranking.items()) + ".", ""]
        if results.supernet_budgets:
            lines += [budgets_caption(results), "", *markdown_lines(*budget_table(results)), ""]
        lines += markdown_lines(*truth_table(results))
    lines += ["", "## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    return "\n".join(lines)


def _truth_markdown(results: BenchResults) -> str:
    """A bench that searched nothing yet: its ground truth and the budget supernets' rankings of it."""
    b, gt = results.budget, results.ground_truth
    lines = [f"# das-tune bench: {results.study} on {results.space}", "",
             f"Skip {fmt(results.num_skip)} of {fmt(results.num_candidates)} candidates ({fmt(results.num_subsets)} subsets). "
             f"No method has searched yet: the ground truth alone, every reference subset retrained for {fmt(b.retrain_epochs)} "
             f"epoch(s) at each of the retrain seeds {', '.join(fmt(s) for s in b.retrain_seeds)}.", ""]
    if gt is None:
        return "\n".join([*lines, "The ground truth is not finished yet.", ""])
    return "\n".join([*lines, "## Ground truth", "", *truth_summary(results, gt), ""])


def truth_summary(results: BenchResults, gt: GroundTruth) -> list[str]:
    """A finished ground truth's lines: cost, noise and collapses, the rankable check, every subset's
    retrains and, if measured, the budget supernets' rankings (results.md and docs/benchmarks.md)."""
    lines = [truth_line(gt), "", rankable_line(gt), "", *markdown_lines(*truth_table(results))]
    if results.supernet_budgets:
        lines += ["", budgets_caption(results), "", *markdown_lines(*budget_table(results))]
    return lines


def truth_line(gt: GroundTruth) -> str:
    """The ground truth's cost, noise and collapses, in one sentence."""
    return (f"{fmt(gt.retrains)} retrains, {fmt(gt.retrain_seconds)} s of retraining in all; retrain noise "
            f"(median std over retrain seeds) {fmt(gt.noise_std)}; collapsed retrains (more than {fmt(gt.collapse_margin)} "
            f"below the same subset's best seed): {fmt(gt.collapses)}.")


def rankable_line(gt: GroundTruth) -> str:
    """The check that the space can tell methods apart at all: its best subset far above its median one."""
    if gt.rankable is None:
        return "Rankable: — (no retrain noise measured)."
    below = "**not rankable by this check: methods cannot be told apart with confidence**"
    verdict = "rankable" if gt.rankable >= gt.rankable_goal else below
    return (f"Rankable check: the best reference subset is {fmt(gt.rankable)} retrain-noise sd above the median one "
            f"(best {fmt(gt.best)}, median {fmt(gt.median)}; goal ≥ {fmt(gt.rankable_goal)}): {verdict}. Good set (within "
            f"{fmt(gt.good_width)} sd of the best): {fmt(len(gt.good_set or []))} of {fmt(len(gt.subsets))} subsets.")


def verdict_lines(results: BenchResults) -> list[str]:
    """The verdict in words (results.md and the README)."""
    v, gt = results.verdict, results.ground_truth
    if v is None or gt is None:
        return []
    distance = f"{fmt(gt.rankable)} retrain-noise sd from the median subset to the best; goal ≥ {fmt(gt.rankable_goal)}"
    space = f"Rankable ({distance})." if v.rankable else f"Not rankable by the check ({distance}): a method's count below may be luck."
    good = gt.good_set or []
    named = f": {'; '.join(s.replace(',', ', ') for s in good)}" if len(good) <= 4 else ""
    counts = ", ".join(f"{method} {fmt(c.good)} of {fmt(c.seeds)}" for method, c in v.good_counts.items())
    lines = [f"**Verdict.** {space} Picks in the good set ({fmt(len(good))} of {fmt(len(gt.subsets))} subsets{named}), "
             f"of the seeds: {counts}."]
    if v.goals:
        own = v.good_counts[v.reference]
        lines.append(f"{v.reference}, the reference method: " + "; ".join(_goal_text(g, own) for g in v.goals) + ".")
    if v.supernet_picks is not None:
        nets = v.supernet_picks
        lines.append(f"{v.reference}'s own supernet, scoring every reference subset, would pick one in the good set at "
                     f"{fmt(nets.good)} of {fmt(nets.seeds)} seeds (its lowest loss).")
    return lines


def _goal_text(g: GoalCheck, own: GoodCount) -> str:
    if g.kind == "good_set":
        text = f"in the good set at {fmt(own.good)} of {fmt(own.seeds)} seeds (goal ≥ {fmt(g.target)})"
    else:
        text = (f"{'ahead of' if g.kind == 'ahead_of' else 'not behind'} {g.other} at p < {fmt(g.target)} "
                f"(Δ {fmt(g.mean_diff)}, p = {fmt(g.p_value)})")
    return text + (": met" if g.met else ": **missed**")


def markdown_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def rich_table(results: BenchResults) -> Table:
    header, rows = summary_table(results, compact=True)
    table = Table(title=f"das-tune bench: {results.study} on {results.space}", box=box.SIMPLE_HEAD,
                  padding=(0, 1), collapse_padding=True, pad_edge=False, caption="medians over seeds; quartiles and ranges in results.md")
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i == 0, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table
