"""``das-tune bench``: DAS against baseline samplers and training-free layer scores, measured alike.

    from das_tune.bench import BenchConfig, run_bench
    results = run_bench(BenchConfig(study="easyvqa_minilm", seeds=5, ground_truth=True))

writes ``results.json``, ``results.md`` and PNGs into ``bench/<space>-skip<num_skip>/`` (or ``config.out``) and
returns the results document (``results.BenchResults``). See :mod:`das_tune.bench.runs` for what is shared between runs.
"""

from __future__ import annotations

from das_tune import atomic
from das_tune.bench.baselines import METHODS
from das_tune.bench.runs import BenchConfig, Plan, execute, plan
from das_tune.progress import Reporter
from das_tune.results import BenchFiles, BenchResults, write_json

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def run_bench(config: BenchConfig, reporter: Reporter | None = None) -> BenchResults:
    from das_tune.bench import plots, report

    p = plan(config)
    records, truth = execute(p, reporter or Reporter())
    results = report.summarise(p, records, truth)
    names = plots.write_plots(results, p.out)
    results.files = BenchFiles(out=str(p.out), json_name=RESULTS_JSON, markdown=RESULTS_MD, plots=names)
    write_json(results, p.out / RESULTS_JSON)
    atomic.write_text(p.out / RESULTS_MD, report.markdown(results, names))
    return results


__all__ = ["BenchConfig", "METHODS", "Plan", "plan", "run_bench"]
