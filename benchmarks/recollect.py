"""Rebuild a committed benchmark's results.json, results.md and plots from what its folder holds (the search
records, the retrains' metrics.json and plan.yaml; a bench of one num_skip), training nothing: after das-tune's statistics change, the
committed numbers follow without a re-run.

    python benchmarks/recollect.py bench/minilm_vqa_sublayers-skip4 bench/minilm_vqa-skip2
    python benchmarks/readme_tables.py      # then the docs' bench blocks
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from das_tune.artifacts.results import BenchResults
from das_tune.bench import plots, report
from das_tune.bench.runs import BenchConfig, SupernetBudget, plan


def config_of(out: Path) -> BenchConfig:
    """The config that produced ``out``: its study as plan.yaml resolved it (tiny, if it was), its methods, seeds (a
    ground truth alone: none, so seed 0), retrain seeds and uniform supernets."""
    held = yaml.safe_load((out / "plan.yaml").read_text())
    study = {**held["truth"], **held["search"]}
    results = BenchResults.read(out / "results.json")
    truth, budgets = results.ground_truth, results.supernet_budgets.values()
    return BenchConfig(
        study=study["name"], seeds=tuple(results.seeds) or (0,), samplers=tuple(results.samplers), methods=tuple(results.methods),
        retrain_seeds=len(results.budget.retrain_seeds), ground_truth=truth is not None,
        reference_size=len(truth.subsets) if truth else 40,
        overrides={**{key: study[key] for key in ("backbone", "task", "search", "retrain", "sampler", "ray")},
                   "num_skip": results.num_skip, "storage": results.storage, **({"tiny": True} if results.tiny else {})},
        out=out, supernet_budgets=tuple(SupernetBudget(b.steps, b.supernets) for b in budgets),
        supernet_seeds=tuple(sorted({s for b in budgets for s in b.seeds})) or None,
        reference=results.reference,
    )


def recollect(out: Path) -> None:
    p = plan(config_of(out))
    earlier = BenchResults.read(out / "results.json")
    results = report.collect(p)
    if not results.warmup_ranking:  # the supernets' losses stay in runs/, which a clone lacks: keep what they gave
        results.warmup_ranking = earlier.warmup_ranking
    if not results.supernet_budgets:
        results.supernet_budgets = earlier.supernet_budgets
    names = plots.write_plots(results, p.out)
    report.save(results, p.out, report.markdown(results, names), names)
    print(f"{out}: {len(results.runs)} runs collected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    for out in parser.parse_args().folders:
        recollect(out)


if __name__ == "__main__":
    main()
