"""Subnet trials per hour on one GPU: one trial at a time (gpus_per_trial 1.0) vs four packed (0.25).

    python benchmarks/gpu_packing.py [--study easyvqa_minilm] [--trials 16] [--steps 50] [--cpus-per-trial 3]

Both settings run the same Ray Tune search (no scheduler, no warm-up, so every trial does the same
work) through ``RaySearch``; the time includes Ray's scheduling and the workers' start-up, as a user
sees it. Goal: ≥ 2.5× the trials per hour with 4 packed. Last line: the ratio. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import optuna
import ray  # noqa: E402  after das_tune.search, which keeps Ray's node address on 127.0.0.1
import torch
import transformers

from das_tune.progress import Reporter
from das_tune.search.prepare import prepare_search
from das_tune.search.ray_tune import RaySearch
from das_tune.spec.study import load_study_spec
from das_tune.training.components import build_components


def trials_per_hour(args: argparse.Namespace, concurrent: int, folder: str) -> float:
    spec = load_study_spec(args.study, {
        "search.executor": "ray", "search.warmup_epochs": 0,
        "ray.num_trials": args.trials, "ray.steps_per_trial": args.steps, "ray.report_every": args.steps,
        "ray.scheduler": None, "ray.max_concurrent_trials": concurrent, "ray.gpus_per_trial": 1 / concurrent,
        "ray.cpus_per_trial": args.cpus_per_trial,
        "storage": f"sqlite:///{folder}/packing.db", "output_dir": folder, "study_name": f"packing-{concurrent}",
    })
    search = RaySearch(prepare_search(spec, build_components(spec), fresh=True, reporter=Reporter()))
    start = time.perf_counter()
    search.run()
    elapsed = time.perf_counter() - start
    rate = args.trials / elapsed * 3600
    print(f"{concurrent} concurrent (gpus_per_trial {1 / concurrent:g}): {args.trials} trials in {elapsed:.1f} s, {rate:.0f} trials/hour")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="easyvqa_minilm")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cpus-per-trial", type=float, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_packing: needs a CUDA GPU; nothing measured")
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    ray.init(address="local", num_cpus=int(4 * args.cpus_per_trial), num_gpus=1, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    with tempfile.TemporaryDirectory() as folder:
        one = trials_per_hour(args, 1, folder)
        four = trials_per_hour(args, 4, folder)
    print(f"trials/hour with 4 packed / with 1: {four / one:.2f}")


if __name__ == "__main__":
    main()
