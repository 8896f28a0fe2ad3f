"""Search throughput of the data-parallel one-shot search with 1 and 2 workers.

Throughput is micro-batches (global batches of ``search.batch_size`` rows) trained per second by
the one-shot search of the main study (MiniLM on easy-VQA): 1 worker is the one-process search, 2
workers the DDP search through Ray Train (gloo on CPU, NCCL on GPUs). Each count runs twice, with
``--short`` and ``--steps`` micro-batches per epoch; the throughput is the difference in steps over
the difference in seconds, so the fixed costs (starting the workers, building the model) cancel
out. Ray is started once, before any timing. The last line is the ratio (2 workers ÷ 1).

    python benchmarks/ddp_scaling.py [--steps 40] [--short 10] [--batch-size 32] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

STUDY = "easyvqa_minilm"


def search_seconds(workers: int, steps: int, args: argparse.Namespace) -> float:
    from das_tune.jobs.runner import search
    from das_tune.progress import Reporter
    from das_tune.spec.study import load_study_spec
    from das_tune.training.components import build_components
    from das_tune.training.loop import seed_everything

    out = Path(tempfile.mkdtemp())
    spec = load_study_spec(STUDY, {
        "tiny": args.tiny, "storage": f"sqlite:///{out / 'db.sqlite'}", "output_dir": str(out),
        "search.workers": workers, "search.batch_size": args.batch_size, "search.max_steps_per_epoch": steps,
        "search.warmup_epochs": 1, "search.search_epochs": 1, "search.observe_every": 5,
    })
    seed_everything(spec.seed)
    parts = build_components(spec)
    start = time.perf_counter()
    search(spec, parts, fresh=True, reporter=Reporter())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="micro-batches per epoch, long run")
    parser.add_argument("--short", type=int, default=10, help="micro-batches per epoch, short run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="the tiny random model (a smoke run)")
    args = parser.parse_args()

    import optuna

    from das_tune.search.ray_cluster import ray_session
    from das_tune.spec.study import RaySpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    throughput = {}
    with ray_session(RaySpec(), num_cpus=2):
        for workers in (1, 2):
            long, short = search_seconds(workers, args.steps, args), search_seconds(workers, args.short, args)
            steps = 2 * (args.steps - args.short)  # warm-up and search epochs
            throughput[workers] = steps / (long - short)
            print(f"workers {workers}: {throughput[workers]:.2f} micro-batches/s "
                  f"({2 * args.steps} in {long:.1f} s, {2 * args.short} in {short:.1f} s; batch {args.batch_size})", flush=True)
    print(f"throughput ratio, 2 workers / 1 worker: {throughput[2] / throughput[1]:.2f}")


if __name__ == "__main__":
    main()
