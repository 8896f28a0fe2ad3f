"""``das-tune bench``: DAS against baseline samplers and training-free layer scores, measured alike.

    from das_tune.bench import BenchConfig, run_bench
    results = run_bench(BenchConfig(study="easyvqa_minilm", seeds=(0, 1, 2, 3, 4), ground_truth=True))

writes ``results.json`` (:class:`~das_tune.artifacts.results.BenchResults`), ``results.md`` and PNGs into
``bench/<space>-skip<num_skip>/`` (or ``config.out``) and returns the results. The results cover every seed
run into that folder so far, so a benchmark can be run in pieces. See :mod:`das_tune.bench.runs` for what
is shared between runs. With a range of num_skip (``--num-skip 1-3``) the benchmark is
:mod:`das_tune.bench.ladder`'s: one search of the range against DAS searching each size on its own.
"""

from __future__ import annotations

from das_tune.artifacts.results import BenchResults, LadderResults
from das_tune.bench.baselines import METHODS
from das_tune.bench.runs import BenchConfig, Plan, SupernetBudget, parse_seeds, plan
from das_tune.progress import Reporter
from das_tune.spec.study import load_study_spec


def run_bench(config: BenchConfig, reporter: Reporter | None = None) -> BenchResults | LadderResults:
    """Run (or resume) the benchmark ``config`` declares; a range of num_skip runs :mod:`das_tune.bench.ladder`."""
    from das_tune.bench import ladder, plots, report, runs

    if load_study_spec(config.study, config.overrides).load_space().is_range:
        return ladder.run_ladder(config, reporter)
    p = plan(config)
    runs.execute(p, reporter or Reporter())
    results = report.collect(p)
    names = plots.write_plots(results, p.out)
    report.save(results, p.out, report.markdown(results, names), names)
    return results


__all__ = ["BenchConfig", "BenchResults", "LadderResults", "METHODS", "Plan", "SupernetBudget", "parse_seeds", "plan", "run_bench"]
