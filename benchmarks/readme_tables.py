"""The bench blocks of README.md and docs/benchmarks.md, rendered from the committed results (``bench/*/results.json``).

    python benchmarks/readme_tables.py           # rewrite every block in both files
    python benchmarks/readme_tables.py --check   # exit 1 if either differs (tests/test_bench.py checks it)

A block is ``<!-- bench-table: bench/<folder> -->`` … ``<!-- /bench-table -->``: the medians over seeds of
a sampler bench (one num_skip), or a ladder bench's (a range of num_skip) with its paired tests, cost ratio,
percentiles and, where a committed bench of one size holds every subset's retrains, its picks' values there;
or, for a bench of ground truth alone (no method searched yet), every subset's retrains, the rankable check
and the uniform supernets' rankings, as its results.md has them. A ``<!-- bench-verdict: bench/<folder> -->``
block is a sampler bench's verdict: whether its space ranks, each method's picks in the good set and the
reference method's goals, with a short table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from das_tune.artifacts.results import BenchResults
from das_tune.bench.report import fmt, truth_summary, verdict_lines

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- bench-(table|verdict): (\S+) -->\n)(.*?)(<!-- /bench-\2 -->)", re.S)
FILES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)])


def versus(test: dict | None) -> str:
    """A paired test's cell: the reference's mean advantage, its p-value and the number of pairs."""
    return "reference" if test is None else f"{fmt(test['mean_diff'])}, p={fmt(test['p_value'])} ({test['n']})"


def median(summary: dict, key: str) -> str:
    return fmt((summary.get(key) or {}).get("median"))


def sampler_block(results: dict) -> str:
    header = ["method", "accuracy", "GMACs", "regret", "pct", "top 10 %", "τ", "τ net", "wall s", "Δ vs das"]
    rows = [
        [method, median(s, "value"), median(s, "additional_gmacs"), median(s, "regret"), median(s, "percentile"),
         fmt(s["top10_share"]), median(s, "kendall_tau"), median(s, "supernet_kendall_tau"), median(s, "cost_seconds"),
         versus(results["paired_tests"].get(method))]
        for method, s in results["summary"].items()
    ]
    return table(header, rows)


def ladder_block(results: dict, benches: dict[str, dict]) -> str:
    sizes, reference, summary = [str(k) for k in results["sizes"]], results["reference"], results["summary"]
    header = ["method", *(f"skip {k}" for k in sizes), "hypervolume", "steps", "wall s", f"Δ hypervolume vs {reference}"]
    rows = [
        [method, *(fmt(s["value"][k]["median"]) for k in sizes), median(s, "hypervolume"), median(s, "steps"),
         median(s, "seconds"), versus(results["paired_tests"].get(method, {}).get("hypervolume"))]
        for method, s in summary.items()
    ]
    parts = [table(header, rows)]
    per_size = results["paired_tests"].get("das_per_size")
    if per_size:
        tests = "; ".join(f"skip {k}: {versus(per_size[k])}" for k in sizes)
        parts.append(f"{reference} − das_per_size, paired by seed: {tests}.")
    cost, full = results["cost_ratio"], results["full"]
    parts.append(
        f"Cost of one range search over one single-size search: {fmt(cost['steps'])}× in training steps, "
        f"{fmt(cost['seconds'])}× in wall-clock (median over {cost['seeds']} seeds). Full model: {fmt(full['mean'])}."
    )
    for k in map(str, results["ground_truth_sizes"]):
        percentiles = ", ".join(f"{method} {fmt(s['percentile'][k]['median'])}" for method, s in summary.items())
        parts.append(f"Skip {k}, every subset retrained: the median percentile of each method's pick among them: {percentiles}.")
    parts += picks_in_other_ground_truths(results, benches)
    return "\n\n".join(parts)


def picks_in_other_ground_truths(results: dict, benches: dict[str, dict]) -> list[str]:
    """For each size another committed bench of the space retrained every subset of: the DAS procedures' picks there."""
    lines = []
    for folder, other in benches.items():
        k = str(other.get("num_skip"))
        truth = other.get("ground_truth") or {}
        if other.get("space") != results["space"] or k not in map(str, results["sizes"]) or truth.get("kind") != "all":
            continue
        methods = [m for m in (results["reference"], "das_per_size") if m in results["summary"]]
        picks = "; ".join(
            f"{method}: " + ", ".join(
                f"{','.join(run['picks'][k])} {fmt(truth['subsets'][','.join(run['picks'][k])]['mean'])}"
                for run in sorted(results["runs"], key=lambda r: r["seed"]) if run["method"] == method
            )
            for method in methods
        )
        lines.append(f"Size-{k} picks in the skip-{k} ground truth ({folder}, mean of {len(truth['retrain_seeds'])} retrains): {picks}.")
    return lines


def truth_block(results: dict) -> str:
    typed = BenchResults.model_validate(results)
    if typed.ground_truth is None:
        raise ValueError(f"bench of {typed.space} skip {typed.num_skip}: no method and no finished ground truth to show")
    return "\n".join(truth_summary(typed, typed.ground_truth))


def verdict_block(results: dict) -> str:
    typed = BenchResults.model_validate(results)
    if typed.verdict is None:
        raise ValueError(f"bench of {typed.space} skip {typed.num_skip}: no verdict (no searches against a ground truth)")
    header = ["method", "picks in the good set", "regret", "percentile", "wall s", f"Δ vs {typed.reference}"]
    counts, tests = typed.verdict.good_counts, typed.paired_tests
    rows = [[method, fmt(counts[method].good) if method in counts else "—", fmt(s.regret.median), fmt(s.percentile.median),
             fmt(s.cost_seconds.median), versus(tests[method].model_dump() if method in tests else None)]
            for method, s in typed.summary.items()]
    return "\n\n".join(["\n".join(verdict_lines(typed)), table(header, rows)])


def committed() -> dict[str, dict]:
    """``{"bench/<folder>": results}`` of every committed bench."""
    return {str(p.parent.relative_to(ROOT)): json.loads(p.read_text()) for p in sorted((ROOT / "bench").glob("*/results.json"))}


def render(readme: str, benches: dict[str, dict]) -> str:
    def block(match: re.Match) -> str:
        kind, results = match.group(2), benches[match.group(3)]
        if kind == "verdict":
            body = verdict_block(results)
        elif "sizes" in results:
            body = ladder_block(results, benches)
        else:
            body = sampler_block(results) if results["summary"] else truth_block(results)
        return f"{match.group(1)}{body}\n{match.group(5)}"

    return BLOCK.sub(block, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the files; exit 1 if one differs")
    args = parser.parse_args()
    benches = committed()
    differ = []
    for path in FILES:
        text = path.read_text()
        if (rendered := render(text, benches)) != text:
            differ.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                path.write_text(rendered)
    if args.check and differ:
        sys.exit(f"the bench blocks of {', '.join(differ)} differ from bench/*/results.json: run benchmarks/readme_tables.py")


if __name__ == "__main__":
    main()
