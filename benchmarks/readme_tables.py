"""The bench blocks of README.md and docs/benchmarks.md, rendered from the committed results (``bench/*/results.json``).

    python benchmarks/readme_tables.py           # rewrite every block in both files
    python benchmarks/readme_tables.py --check   # exit 1 if either differs (tests/test_bench.py checks it)

A block is ``<!-- bench-table: bench/<folder> -->`` … ``<!-- /bench-table -->``: the medians over seeds of
a sampler bench (one num_skip), or a ladder bench's (a range of num_skip) with its paired tests, cost ratio,
percentiles and, where a committed bench of one size holds every subset's retrains, its picks' values there;
or, for a bench of ground truth alone (no method searched yet), every subset's retrains, the rankable check
and the budget supernets' rankings, as its results.md has them. A ``<!-- bench-verdict: bench/<folder> -->``
block is a sampler bench's verdict: whether its space ranks, each method's picks in the good set and the
reference method's goals, with a short table. The ``<!-- bench-overview: bench -->`` block is one row per
committed bench with a verdict against random search: its space, the rankable check, the judged method's picks in
the good set, how often its own supernet's lowest loss is on a good subset, random search's picks, and their
paired test.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from das_tune.artifacts.results import BenchResults, GoodCount, LadderResults, PairedTest
from das_tune.bench.report import fmt, truth_summary, verdict_lines

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- bench-(table|verdict|overview): (\S+) -->\n)(.*?)(<!-- /bench-\2 -->)", re.S)
FILES = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
Results = BenchResults | LadderResults


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)])


def versus(test: PairedTest | None) -> str:
    """A paired test's cell: the reference's mean advantage, its p-value and the number of pairs."""
    return "reference" if test is None else f"{fmt(test.mean_diff)}, p={fmt(test.p_value)} ({test.n})"


def sampler_block(results: BenchResults) -> str:
    header = ["method", "accuracy", "GMACs", "regret", "pct", "top 10 %", "τ", "τ net", "wall s", f"Δ vs {results.reference}"]
    rows = [
        [method, fmt(s.value.median), fmt(s.additional_gmacs.median), fmt(s.regret.median), fmt(s.percentile.median),
         fmt(s.top10_share), fmt(s.kendall_tau.median), fmt(s.supernet_kendall_tau.median), fmt(s.cost_seconds.median),
         versus(results.paired_tests.get(method))]
        for method, s in results.summary.items()
    ]
    return table(header, rows)


def ladder_block(results: LadderResults, benches: dict[str, Results]) -> str:
    sizes, reference = [str(k) for k in results.sizes], results.reference
    header = ["method", *(f"skip {k}" for k in sizes), "hypervolume", "steps", "wall s", f"Δ hypervolume vs {reference}"]
    rows = [
        [method, *(fmt(s.value[k].median) for k in sizes), fmt(s.hypervolume.median), fmt(s.steps.median),
         fmt(s.seconds.median), versus(results.paired_tests.get(method, {}).get("hypervolume"))]
        for method, s in results.summary.items()
    ]
    parts = [table(header, rows)]
    per_size = results.paired_tests.get("das_per_size")
    if per_size:
        tests = "; ".join(f"skip {k}: {versus(per_size[k])}" for k in sizes)
        parts.append(f"{reference} − das_per_size, paired by seed: {tests}.")
    cost, full = results.cost_ratio, results.full
    parts.append(
        f"Cost of one range search over one single-size search: {fmt(cost.steps)}× in training steps, "
        f"{fmt(cost.seconds)}× in wall-clock (median over {cost.seeds} seeds). Full model: {fmt(full.mean)}."
    )
    for k in map(str, results.ground_truth_sizes):
        percentiles = ", ".join(f"{method} {fmt(s.percentile[k].median)}" for method, s in results.summary.items())
        parts.append(f"Skip {k}, every subset retrained: the median percentile of each method's pick among them: {percentiles}.")
    parts += picks_in_other_ground_truths(results, benches)
    return "\n\n".join(parts)


def picks_in_other_ground_truths(results: LadderResults, benches: dict[str, Results]) -> list[str]:
    """For each size another committed bench of the space retrained every subset of: the DAS procedures' picks there."""
    lines = []
    for folder, other in benches.items():
        if not isinstance(other, BenchResults) or other.ground_truth is None:
            continue
        k, truth = str(other.num_skip), other.ground_truth
        if other.space != results.space or k not in map(str, results.sizes) or truth.kind != "all":
            continue
        methods = [m for m in (results.reference, "das_per_size") if m in results.summary]
        picks = "; ".join(
            f"{method}: " + ", ".join(
                f"{','.join(run.picks[k])} {fmt(truth.subsets[','.join(run.picks[k])].mean)}"
                for run in sorted(results.runs, key=lambda r: r.seed) if run.method == method
            )
            for method in methods
        )
        lines.append(f"Size-{k} picks in the skip-{k} ground truth ({folder}, mean of {len(truth.retrain_seeds)} retrains): {picks}.")
    return lines


def truth_block(results: BenchResults) -> str:
    if results.ground_truth is None:
        raise ValueError(f"bench of {results.space} skip {results.num_skip}: no method and no finished ground truth to show")
    return "\n".join(truth_summary(results, results.ground_truth))


def verdict_block(results: BenchResults) -> str:
    if results.verdict is None:
        raise ValueError(f"bench of {results.space} skip {results.num_skip}: no verdict (no searches against a ground truth)")
    header = ["method", "picks in the good set", "regret", "percentile", "wall s", f"Δ vs {results.reference}"]
    counts, tests = results.verdict.good_counts, results.paired_tests
    rows = [[method, fmt(counts[method].good) if method in counts else "—", fmt(s.regret.median), fmt(s.percentile.median),
             fmt(s.cost_seconds.median), versus(tests.get(method))]
            for method, s in results.summary.items()]
    return "\n\n".join(["\n".join(verdict_lines(results)), table(header, rows)])


def overview_block(benches: dict[str, Results]) -> str:
    header = ["bench", "skip", "rankable (sd, goal 5)", "judged method: picks in the good set", "its supernet's own pick",
              "random's", "judged − random"]
    rows = []
    for folder, results in benches.items():
        if not isinstance(results, BenchResults) or results.verdict is None or "random" not in results.paired_tests:
            continue
        counts, judged = results.verdict.good_counts, results.reference
        rows.append([f"`{Path(folder).name}`", f"{results.num_skip} of {results.num_candidates}", fmt(results.ground_truth.rankable),
                     f"{judged} {counts[judged].good} of {counts[judged].seeds}", own_supernet(results.verdict.supernet_picks),
                     f"{counts['random'].good} of {counts['random'].seeds}",
                     versus(results.paired_tests["random"])])
    return table(header, rows)


def own_supernet(picks: GoodCount | None) -> str:
    return "—" if picks is None else f"{picks.good} of {picks.seeds}"


def load(document: dict) -> Results:
    """A committed results.json as its type: a range of num_skip (``sizes``) or one num_skip."""
    return LadderResults.model_validate(document) if "sizes" in document else BenchResults.model_validate(document)


def committed() -> dict[str, Results]:
    """``{"bench/<folder>": results}`` of every committed bench."""
    return {str(p.parent.relative_to(ROOT)): load(json.loads(p.read_text())) for p in sorted((ROOT / "bench").glob("*/results.json"))}


def render(readme: str, benches: dict[str, Results]) -> str:
    def block(match: re.Match) -> str:
        kind = match.group(2)
        if kind == "overview":
            return f"{match.group(1)}{overview_block(benches)}\n{match.group(5)}"
        results = benches[match.group(3)]
        if kind == "verdict":
            body = verdict_block(results)
        elif isinstance(results, LadderResults):
            body = ladder_block(results, benches)
        else:
            body = sampler_block(results) if results.summary else truth_block(results)
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
