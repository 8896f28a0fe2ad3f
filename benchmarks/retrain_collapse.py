"""Does a retrain collapse? The same subnets retrained at several retrain seeds under named variants of
the retrain (``--set``-style overrides), with the val metric after every epoch.

A retrain *collapses* when its test value is more than ``--margin`` (0.05) below the best retrain seed
of the same subset under the same variant (issue 27's definition); ``below_best_known`` compares with
the best value of that subset under any variant measured here or in ``--bench``'s own retrains. The retrain seed ``r`` is the study's
``seed`` (as ``das-tune bench`` sets it). A variant's overrides apply to the study as it is when it runs, so
each result records its whole retrain budget (``retrain``; the committed ``base``, ``lr1e-3``, ``lr4e-3`` and
``zero_all`` files predate the field: they ran on the study's earlier retrain, up to 8 epochs at lr 2e-3
unless the variant set it).

One JSON per (variant, subset, seed) under ``--out`` (skipped if present: the script resumes), then the
summary ``<out>.json``. One retrain of the MiniLM easy-VQA study takes ~5 minutes on one CPU thread::

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/retrain_collapse.py --bench bench/minilm_vqa_sublayers-skip4 \\
        --subsets A0,F0,A2,A4 A0,F0,A1,F1 --seeds 0 1 --variant base --variant lr1e-3 retrain.lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from das_tune.artifacts.results import FoundBy
from das_tune.progress import Reporter
from das_tune.spec.study import load_study_spec, parse_overrides
from das_tune.training.components import build_components
from das_tune.training.retrain import retrain

OUT = Path(__file__).resolve().parent / "retrain_collapse"


class CurveReporter(Reporter):
    """Prints what a retrain reports and keeps the mean training loss of every epoch."""

    def __init__(self) -> None:
        self.train_loss: list[float] = []
        self._losses: list[float] = []

    def phase(self, name: str, total: int) -> None:  # a retrain starts each epoch with a phase
        self.close()

    def advance(self, loss: float | None = None, probabilities: Any = None) -> None:
        if loss is not None:
            self._losses.append(loss)

    def log(self, message: str) -> None:
        print(f"  {message}", flush=True)

    def close(self) -> None:
        """Ends the epoch under way."""
        if self._losses:
            self.train_loss.append(statistics.fmean(self._losses))
            self._losses = []


def run_one(study: str, overrides: dict[str, Any], subset: list[str], seed: int) -> dict[str, Any]:
    spec = load_study_spec(study, {**overrides, "seed": seed})
    parts = build_components(spec)
    skipped = parts.space.validate_subset(subset)
    curve = CurveReporter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        metrics = retrain(spec, parts, skipped, FoundBy(sampler="retrain_collapse"), curve, out_dir=Path(scratch))
    curve.close()
    return {
        "subset": "+".join(metrics.skipped), "seed": seed, "overrides": overrides, "retrain": spec.retrain.recorded(),
        "value": metrics.value, "best_epoch": metrics.best_epoch, "epochs_run": metrics.epochs_run, "val": metrics.val,
        "val_curve": [val[metrics.metric] for val in metrics.val_history], "val_loss_curve": [val["loss"] for val in metrics.val_history],
        "train_loss_curve": curve.train_loss,
        "seconds": time.perf_counter() - start,
    }


def committed(bench: Path | None, subsets: set[str]) -> dict[str, dict[int, float]]:
    """The bench's own retrains of ``subsets``: {subset: {retrain seed: test value}}."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(bench.glob("retrain/seed*/*/metrics.json")) if bench else []:
        if path.parent.name in subsets:
            seed = int(path.parent.parent.name.removeprefix("seed"))
            found.setdefault(path.parent.name, {})[seed] = json.loads(path.read_text())["value"]
    return found


def summarize(results: list[dict[str, Any]], margin: float, bench: Path | None) -> dict[str, Any]:
    base = committed(bench, {r["subset"] for r in results})
    best_known = {subset: max(values.values()) for subset, values in base.items()}
    for r in results:
        best_known[r["subset"]] = max(best_known.get(r["subset"], 0.0), r["value"])
    summary: dict[str, Any] = {}
    for variant in sorted({r["variant"] for r in results}):
        rows = [r for r in results if r["variant"] == variant]
        subsets: dict[str, dict[str, Any]] = {}
        for subset in sorted({r["subset"] for r in rows}):
            values = {r["seed"]: r["value"] for r in rows if r["subset"] == subset}
            best = max(values.values())
            subsets[subset] = {
                "values": values, "committed": base.get(subset), "sd": statistics.stdev(values.values()) if len(values) > 1 else None,
                "collapsed_seeds": [s for s, v in values.items() if len(values) > 1 and v < best - margin],
                "below_best_known_seeds": [s for s, v in values.items() if v < best_known[subset] - margin],
            }
        summary[variant] = {
            # the budget itself: the overrides are relative to the study as it was (files before this field lack it)
            "overrides": rows[0]["overrides"], "retrain": rows[0].get("retrain"), "retrains": len(rows),
            "paired_retrains": sum(len(s["values"]) for s in subsets.values() if len(s["values"]) > 1),
            "collapses": sum(len(s["collapsed_seeds"]) for s in subsets.values()),
            "below_best_known": sum(len(s["below_best_known_seeds"]) for s in subsets.values()),
            "below_0.95": sum(r["value"] < 0.95 for r in rows),
            "mean_value": statistics.fmean(r["value"] for r in rows),
            "mean_seconds": statistics.fmean(r["seconds"] for r in rows),
            "subsets": subsets,
        }
    return {"margin": margin, "bench": str(bench) if bench else None, "variants": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="easyvqa_minilm_sublayers")
    parser.add_argument(
        "--subsets", nargs="+", required=True,
        help="comma-separated layers, e.g. A0,F0,A2,A4; A0,F0,A2,A4:1 at retrain seed 1 only (:0/1: seeds 0 and 1)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="retrain seeds")
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar=("NAME", "FIELD=VALUE"),
        help="a named variant and its study overrides (repeatable); default: base, no overrides",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--bench", type=Path, help="a bench folder whose retrains of the same subsets count as known values")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the files in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {name: parse_overrides(sets) for name, *sets in (args.variant or [["base"]])}
    if not args.summary_only:
        for name, overrides in variants.items():
            for item in args.subsets:
                subset, _, only = item.partition(":")
                for seed in [int(s) for s in only.split("/")] if only else args.seeds:
                    path = args.out / name / f"{subset.replace(',', '+')}-seed{seed}.json"
                    if path.is_file():
                        continue
                    result = {"variant": name, **run_one(args.study, overrides, subset.split(","), seed)}
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(result, indent=1) + "\n")
                    print(f"{name} {result['subset']} seed{seed}: {result['value']:.3f} (best epoch {result['best_epoch']} "
                          f"of {result['epochs_run']}) val {[round(v, 3) for v in result['val_curve']]} {result['seconds']:.0f} s",
                          flush=True)
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*/*.json"))]
    summary_path = args.out.with_suffix(".json")
    summary_path.write_text(json.dumps(summarize(results, args.margin, args.bench), indent=1) + "\n")
    print(f"summary: {summary_path}")


if __name__ == "__main__":
    main()
