"""What a bench's warm-up supernets know: every reference subset scored on the whole val split (eval mode) with
the task's full metrics (accuracy, loss, accuracy by question kind), on each seed's saved warm-up checkpoint.

The bench's own supernet figures use the loss on the observation batches; this asks whether the whole val split, or
the accuracy instead of the loss, would pick better, and whether the supernet has learned what separates the
subsets at all. It trains nothing, but needs the warm-up checkpoints of ``runs/`` (a clone lacks them: rerunning
the bench's command rebuilds them). Writes ``<folder>/supernet_val_scores.json``, resuming seed by seed::

    OMP_NUM_THREADS=1 python benchmarks/supernet_val_scores.py bench/minilm_vqa_sublayers-skip11-warm300-obs4-seeds30-59

Last line: the seeds whose lowest whole-val loss is a good-set subset, of the seeds scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from recollect import config_of

from das_tune.artifacts.results import BenchResults
from das_tune.bench.runs import load_warm, plan, saved_warmups, subset_key
from das_tune.training import loop
from das_tune.training.components import Components, build_components

OUT_FILE = "supernet_val_scores.json"


def score_folder(folder: Path, out: Path, seeds: tuple[int, int] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{seed: {subset: val metrics}} of every saved warm-up of ``folder`` (of seeds ``first..last``), resumed from and
    written to ``out`` after every seed."""
    p = plan(config_of(folder))
    scores = json.loads(out.read_text()) if out.is_file() else {}
    first, last = seeds or (min(p.config.seeds), max(p.config.seeds))
    parts = None
    for seed, warm in saved_warmups(p, [s for s in p.config.seeds if first <= s <= last]).items():
        if str(seed) in scores:
            continue
        parts = parts or build_components(p.spec(seed))  # a checkpoint holds every trained tensor; the rest is pre-trained
        load_warm(parts, warm.checkpoint)
        scores[str(seed)] = {subset_key(p.space, s): score(parts, s, p.base.search.batch_size) for s in p.reference}
        out.write_text(json.dumps(scores, indent=1, sort_keys=True) + "\n")
        print(f"seed {seed}: scored {len(p.reference)} subsets", flush=True)
    return scores


def score(parts: Components, skipped: frozenset[str], batch_size: int) -> dict[str, float]:
    parts.model.set_skipped(skipped)
    try:
        return loop.evaluate(parts.model, parts.task, "val", batch_size)
    finally:
        parts.model.set_skipped(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("FIRST", "LAST"), help="only these seeds (two processes can split a folder)")
    parser.add_argument("--out", type=Path, help=f"default: <folder>/{OUT_FILE}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores = score_folder(args.folder, args.out or args.folder / OUT_FILE, args.seeds)
    good = set(BenchResults.read(args.folder / "results.json").ground_truth.good_set)
    hits = sum(min(by_subset, key=lambda s: by_subset[s]["loss"]) in good for by_subset in scores.values())
    print(f"lowest whole-val loss in the good set: {hits} of {len(scores)} seeds")


if __name__ == "__main__":
    main()
