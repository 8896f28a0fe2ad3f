"""One-shot DAS search against plain adapter training of the full model, same epochs and batches.

Prints the wall-clock ratio (search ÷ plain; goal ≤ 1.25) and the peak-memory ratio (supernet ÷
plain; goal ≤ 1.15). Each mode runs in its own process. Memory is the peak of CUDA allocations on a
GPU; on a CPU it is the growth of the process's peak RSS during training (model and data are loaded
before the baseline is read, so the figure is what training itself adds). The last line is the
wall-clock ratio.

    python benchmarks/search_overhead.py [--epochs 3] [--train-limit 1024] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STUDY = "easyvqa_minilm"


def measure(mode: str, epochs: int, train_limit: int, device: str) -> dict[str, float]:
    import optuna

    from das_tune.progress import Reporter
    from das_tune.search import oneshot
    from das_tune.search.prepare import prepare_search
    from das_tune.spec.study import load_study_spec
    from das_tune.training import loop
    from das_tune.training.components import build_components

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(tempfile.mkdtemp())
    spec = load_study_spec(STUDY, {
        "storage": f"sqlite:///{out / 'db.sqlite'}", "output_dir": str(out),
        "task.options.train_limit": train_limit, "search.warmup_epochs": 1, "search.search_epochs": epochs - 1,
    })
    loop.seed_everything(0)
    parts = build_components(spec)
    parts.model.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    search = prepare_search(spec, parts, fresh=True, reporter=Reporter()) if mode == "search" else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if search is not None:
        oneshot.run(search)
    else:
        steps = loop.steps_per_epoch(parts.task, spec.search.batch_size, None)
        trainer = loop.Trainer(parts.model, spec.search, steps, epochs)
        for epoch in range(epochs):
            batches = loop.epoch_batches(parts.task, parts.model, spec.search.batch_size, seed=0, epoch=epoch, max_steps=None)
            for step, batch in enumerate(batches):
                trainer.train(parts.task, batch, step)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return {"seconds": seconds, "peak_bytes": float(peak)}


def run_in_subprocess(mode: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, "--epochs", str(args.epochs),
               "--train-limit", str(args.train_limit), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3, help="warm-up 1 + search epochs - 1")
    parser.add_argument("--train-limit", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=["search", "plain"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.epochs, args.train_limit, args.device)))
        return
    plain, search = run_in_subprocess("plain", args), run_in_subprocess("search", args)
    print(f"{STUDY}, {args.epochs} epochs of {args.train_limit} questions on {args.device}")
    print(f"plain adapter training : {plain['seconds']:7.1f} s  peak +{plain['peak_bytes'] / 2**20:8.1f} MiB")
    print(f"one-shot DAS search    : {search['seconds']:7.1f} s  peak +{search['peak_bytes'] / 2**20:8.1f} MiB")
    memory = search["peak_bytes"] / max(plain["peak_bytes"], 1.0)
    print(f"peak memory ratio (goal <= 1.15): {memory:.3f}")
    print(f"search / plain wall-clock (goal <= 1.25): {search['seconds'] / plain['seconds']:.3f}")


if __name__ == "__main__":
    main()
