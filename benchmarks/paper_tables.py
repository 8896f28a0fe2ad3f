"""The paper's Table B on the real case: the full model, DAS's pick and other subsets of the same size, retrained alike.

    python benchmarks/paper_tables.py --bench BENCH_OUT [--main-job docs/main_job.json] [--json docs/table_b.json]
    python benchmarks/paper_tables.py --bench bench/minilm_vqa_sublayers-skip4 --das-seed 0 --others 8 \
        --json docs/table_b_sublayers.json

``BENCH_OUT`` is the output folder of ``das-tune bench --space minilm_vqa --ground-truth`` (whole layers,
skip 2 of 6: its ground truth retrains every one of the 15 subsets, in a fixed random order, at retrain
seeds 0..N-1 with the study's retrain budget). Every subset retrained at every retrain seed so far is a
row, so a ground truth done in part gives a random sample of the subsets, as the paper's Table B shows
a few random subsets beside DAS's. The full model (nothing skipped) and DAS's pick come from the main
job's measurement (``benchmarks/main_job.py``): the full model's retrains at its seeds, and the subset the
main job's search chose (its row is the bench's retrains of that subset, seed 0 being the main job's own;
until the ground truth reaches it, the main job's retrain alone).
Each row: test accuracy (mean and spread over retrain seeds), additional GMACs, FLOPs saved, CPU latency
at batch 1 (the full model's and DAS's pick's from the main job, which ran alone; the bench's from its
retrains, which may have shared the machine: each row says which). README's Table B is checked against
the JSON this writes (tests/test_main_job_readme.py).

For a space the main job does not search (the sublayer space), ``--das-seed S`` takes DAS's pick from the
bench's search record of seed S (``records/das-seedS.json``) and ``--others N`` shows the first N subsets of
the bench's reference sample (``plan.yaml``, a fixed random draw) that are retrained at every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from das_tune.artifacts.results import SearchRecord

ROOT = Path(__file__).resolve().parents[1]


def retrains(bench: Path) -> dict[str, dict[int, dict]]:
    """``{"En1,En2": {retrain seed: metrics.json}}`` of every finished retrain in the bench folder."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(bench.glob("retrain/seed*/*/metrics.json")):
        metrics = json.loads(path.read_text())
        seed = int(path.parent.parent.name.removeprefix("seed"))
        found.setdefault(",".join(metrics["skipped"]), {})[seed] = metrics
    return found


def row(name: str, skipped: list[str], by_seed: dict[int, dict], latency_ms: float | None = None, quiet: bool = False) -> dict:
    """A row from retrains at their seeds; latency is the retrains' own measurement unless given."""
    values = [m["value"] for _, m in sorted(by_seed.items())]
    first = by_seed[min(by_seed)]
    return {
        "row": name, "skipped": skipped, "seeds": sorted(by_seed), "values": values,
        "mean": statistics.mean(values), "std": statistics.pstdev(values),
        "additional_gmacs": first["additional_gmacs"], "flops_saved": first["flops_saved"],
        "latency_ms": latency_ms if latency_ms is not None else statistics.mean(m["latency_subnet_ms"] for m in by_seed.values()),
        "latency_on_a_quiet_machine": quiet,
    }


def das_pick_of(bench: Path, main_job: dict, das_seed: int | None) -> str:
    """The subset DAS chose: the main job's, or the bench's search at ``das_seed``."""
    if das_seed is None:
        return ",".join(main_job["run"]["skipped"])
    return ",".join(SearchRecord.read(bench / "records" / f"das-seed{das_seed}.json").chosen)


def table_b(bench: Path, main_job: dict, das_seed: int | None = None, others: int | None = None) -> dict:
    subsets = retrains(bench)
    seeds_wanted = max((len(s) for s in subsets.values()), default=0)
    complete = {k: v for k, v in subsets.items() if len(v) == seeds_wanted}  # retrained at every retrain seed
    das_pick = das_pick_of(bench, main_job, das_seed)
    if others is None:
        shown = list(complete)
    else:
        sample = yaml.safe_load((bench / "plan.yaml").read_text())["bench"]["reference"]
        shown = [k for k in sample if k in complete][:others] + [k for k in (das_pick,) if k in complete]
    full = {r["seed"]: r["metrics"] for r in main_job["full_model"]}
    run = main_job["run"]  # the main job ran alone: its latencies of the full model and its subnet are comparable
    rows = [row("full model", [], full, latency_ms=run["latency_full_ms"], quiet=True)] if full else []
    ranked = sorted(dict.fromkeys(shown), key=lambda k: -statistics.mean(m["value"] for m in complete[k].values()))
    for rank, key in enumerate(ranked, start=1):
        rows.append({**row("DAS's pick" if key == das_pick else "other subset", key.split(","), complete[key]), "rank": rank})
    if das_pick not in complete:
        if das_seed is not None:
            raise SystemExit(f"DAS's pick at seed {das_seed} ({das_pick}) is not retrained at every retrain seed yet")
        rows.insert(1, row("DAS's pick", run["skipped"], {run["retrain_budget"]["seed"]: run}, quiet=True))  # the main job's own
    return {
        "bench": bench.name, "num_skip": len(das_pick.split(",")), "das_pick": das_pick, "das_seed": das_seed,
        "subsets_retrained": len(complete), "retrain_seeds": seeds_wanted, "rows": rows,
    }


def markdown(result: dict) -> str:
    """README's form of the table."""
    lines = ["| row | skipped | test accuracy: mean (each retrain seed) | additional GMACs | FLOPs saved | latency, batch 1 |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        where = "" if r["latency_on_a_quiet_machine"] else " (shared machine)"
        lines.append(f"| {r['row']} | {', '.join(r['skipped']) or 'none'} | {r['mean']:.3f} ({', '.join(f'{v:.3f}' for v in r['values'])}) "
                     f"| {r['additional_gmacs']:.4f} | {100 * r['flops_saved']:.1f} % | {r['latency_ms']:.1f} ms{where} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a `das-tune bench --ground-truth` output folder")
    parser.add_argument("--main-job", type=Path, default=ROOT / "docs" / "main_job.json",
                        help="the main job's measurement with the bench's retrain budget (its full model is the first row)")
    parser.add_argument("--json", type=Path, help="write the table here")
    parser.add_argument("--das-seed", type=int, help="DAS's pick from the bench's search at this seed (not the main job's)")
    parser.add_argument("--others", type=int, help="show this many subsets of the bench's reference sample (default: all retrained)")
    args = parser.parse_args()
    result = table_b(args.bench, json.loads(args.main_job.read_text()), args.das_seed, args.others)
    result["main_job"] = args.main_job.name  # the measurement its full model comes from (under docs/)
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print(markdown(result))


if __name__ == "__main__":
    main()
