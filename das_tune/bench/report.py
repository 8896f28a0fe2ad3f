"""The benchmark's results: one JSON document, and the markdown and rich tables drawn from it.

Every number in ``results.md`` and in the terminal table is a value of ``results.json`` printed with
:func:`fmt`, so the tables can be checked against the JSON.
"""

from __future__ import annotations

import math
from statistics import mean
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from das_tune.bench import stats
from das_tune.bench.runs import Plan, Truth, subset_key
from das_tune.results import BenchRecord, BenchResults

SUMMARY_FIELDS = ("value", "additional_gmacs", "regret", "rank", "kendall_tau", "observations", "total_steps", "total_seconds", "search_seconds", "retrain_seconds")


def fmt(value: Any) -> str:
    """How every number is printed in the tables."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


# -- the results document -------------------------------------------------------------------------
def summarise(p: Plan, records: list[BenchRecord], truth: Truth | None) -> BenchResults:
    methods = [*p.config.samplers, *p.config.methods]
    ground_truth = _ground_truth(p, truth) if truth is not None else None
    if ground_truth is not None:
        for record in records:
            record.regret, record.rank, record.kendall_tau = _against_truth(p, record, ground_truth["mean"])
    reference = p.config.reference if p.config.reference in methods else methods[0]
    search = p.base.search
    return BenchResults(
        study=p.base.name, space=p.space.label, candidates=list(p.space.candidates),
        num_candidates=len(p.space.candidates), num_skip=p.space.num_skip, num_subsets=p.space.num_subsets,
        metric=records[0].metric, seeds=list(p.seeds), samplers=list(p.config.samplers), methods=list(p.config.methods),
        storage=p.storage, tiny=p.base.tiny,
        budget={
            "warmup_epochs": search.warmup_epochs, "search_epochs": search.search_epochs, "observe_every": search.observe_every,
            "round_size": search.round_size, "observation_batches": search.observation_batches,
            "retrain_epochs": p.base.retrain.epochs,
        },
        reference=reference,
        summary={m: {f: stats.spread([getattr(r, f) for r in records if r.method == m]) for f in SUMMARY_FIELDS} for m in methods},
        paired_tests={m: _paired(records, reference, m) for m in methods if m != reference},
        ground_truth=ground_truth,
        runs=records,
    )


def _ground_truth(p: Plan, truth: Truth) -> dict[str, Any]:
    keys = [subset_key(p.space, s) for s in p.space.all_subsets()]
    per_seed = {str(seed): {k: truth[seed][k].value for k in keys} for seed in truth}
    return {
        "per_seed": per_seed,
        "mean": {k: mean(values[k] for values in per_seed.values()) for k in keys},
        "additional_gmacs": {k: truth[next(iter(truth))][k].additional_gmacs for k in keys},
        "retrains": sum(len(by_subset) for by_subset in truth.values()),
        "retrain_seconds": sum(m.retrain_seconds for by_subset in truth.values() for m in by_subset.values()),
    }


def _against_truth(p: Plan, record: BenchRecord, true_mean: dict[str, float]) -> tuple[float, int, float | None]:
    """Regret and rank of the pick among all subsets (true result: mean retrained metric over seeds),
    and Kendall τ between the method's subset scores (sum of layer scores) and the true results."""
    key = subset_key(p.space, record.chosen)
    tau = None
    if record.layer_scores:
        scores = [sum(record.layer_scores[layer] for layer in k.split(",")) for k in true_mean]
        tau = stats.kendall_tau(scores, list(true_mean.values()))
    return stats.regret(true_mean, key), stats.rank(true_mean, key), tau


def _paired(records: list[BenchRecord], reference: str, other: str) -> dict[str, Any]:
    """``reference`` − ``other`` on the retrained metric, paired by seed."""
    ref = {r.seed: r.value for r in records if r.method == reference}
    oth = {r.seed: r.value for r in records if r.method == other}
    seeds = sorted(ref.keys() & oth.keys())
    return stats.paired_test([ref[s] for s in seeds], [oth[s] for s in seeds])


# -- tables ---------------------------------------------------------------------------------------
def _cell(s: dict[str, Any], detail: str = "full") -> str:
    """``full``: median [quartiles] (min–max); ``median``: the median alone."""
    if s["n"] == 0:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"] or detail == "median":
        return fmt(s["median"])
    return f"{fmt(s['median'])} [{fmt(s['q25'])}, {fmt(s['q75'])}] ({fmt(s['min'])}–{fmt(s['max'])})"


def summary_table(results: BenchResults, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per method, median [IQR] (min–max) over seeds, and the paired test; ``compact``
    (the terminal) shows medians only, and no counts of observations and steps."""
    metric, ref = results.metric, results.reference
    fields = ["value", "additional_gmacs"]
    if results.ground_truth is not None:
        fields += ["regret", "rank", "kendall_tau"]
    fields += ["total_seconds"] if compact else ["observations", "total_steps", "total_seconds"]
    names = {"value": f"test {metric}", "additional_gmacs": "additional GMACs", "regret": "regret", "rank": "rank",
             "kendall_tau": "Kendall τ", "observations": "observations", "total_steps": "training steps",
             "total_seconds": "wall-clock s"}
    paired_name = f"{ref} − method: mean Δ, p (n)"
    if compact:
        names.update(value=metric, additional_gmacs="GMACs", kendall_tau="τ", total_seconds="wall s")
        paired_name = f"Δ vs {ref}"
    header = ["method", *(names[f] for f in fields), paired_name]
    detail = "median" if compact else "full"
    rows = []
    for method, summary in results.summary.items():
        test = results.paired_tests.get(method)
        equals = "=" if compact else " = "
        paired = "reference" if test is None else f"{fmt(test['mean_diff'])}, p{equals}{fmt(test['p_value'])} ({fmt(test['n'])})"
        rows.append([method, *(_cell(summary[f], detail) for f in fields), paired])
    return header, rows


def runs_table(results: BenchResults) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seed", "skipped", f"test {results.metric}", "additional GMACs", "observations",
              "training steps", "search s", "retrain s"]
    if results.ground_truth is not None:
        header += ["regret", "rank", "Kendall τ"]
    rows = []
    for r in results.runs:
        row = [r.method, fmt(r.seed), ", ".join(r.chosen), fmt(r.value), fmt(r.additional_gmacs),
               fmt(r.observations), fmt(r.total_steps), fmt(r.search_seconds), fmt(r.retrain_seconds)]
        if results.ground_truth is not None:
            row += [fmt(r.regret), fmt(r.rank), fmt(r.kendall_tau)]
        rows.append(row)
    return header, rows


def truth_table(results: BenchResults) -> tuple[list[str], list[list[str]]]:
    gt = results.ground_truth
    seeds = list(gt["per_seed"])
    header = ["skipped", f"mean test {results.metric}", *(f"seed {s}" for s in seeds), "additional GMACs"]
    order = sorted(gt["mean"], key=lambda k: -gt["mean"][k])
    rows = [[k.replace(",", ", "), fmt(gt["mean"][k]), *(fmt(gt["per_seed"][s][k]) for s in seeds), fmt(gt["additional_gmacs"][k])] for k in order]
    return header, rows


def markdown(results: BenchResults, plots: list[str]) -> str:
    b = results.budget
    lines = [
        f"# das-tune bench: {results.study} on {results.space}",
        "",
        f"Skip {fmt(results.num_skip)} of {fmt(results.num_candidates)} layers ({fmt(results.num_subsets)} subsets). "
        f"Seeds: {', '.join(fmt(s) for s in results.seeds)}. Every run: {fmt(b['warmup_epochs'])} shared warm-up epoch(s); "
        f"samplers then search {fmt(b['search_epochs'])} epoch(s) on the same supernet, observing {fmt(b['round_size'])} subsets "
        f"every {fmt(b['observe_every'])} steps; every pick is retrained for {fmt(b['retrain_epochs'])} epoch(s).",
        "",
        "Cells: median [quartiles] (min–max) over seeds. Training steps and wall-clock include the shared warm-up "
        "and the retrain. Paired test: exact sign-flip permutation on the retrained metric, paired by seed.",
    ]
    if results.ground_truth is not None:
        lines.append("Regret and rank: against every subset retrained the same way (mean over seeds); "
                     "Kendall τ: a method's subset scores (sum of its layer scores) against those results.")
    lines += ["", "## Summary", "", *_md(*summary_table(results)), "", "## Runs", "", *_md(*runs_table(results))]
    if results.ground_truth is not None:
        gt = results.ground_truth
        lines += ["", "## Ground truth: every subset retrained", "",
                  f"{fmt(gt['retrains'])} retrains, {fmt(gt['retrain_seconds'])} s of retraining in all.", "",
                  *_md(*truth_table(results))]
    lines += ["", "## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    return "\n".join(lines)


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
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
