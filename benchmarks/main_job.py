"""The README's main job, measured: ``das-tune run --study easyvqa_minilm`` and the full model's number.

    python benchmarks/main_job.py [--seeds 0,1,2] [--work DIR] [--json docs/main_job.json]

In an empty work folder (default: a temporary one) it runs, as a user would,

1. ``das-tune run --study easyvqa_minilm`` (search + retrain of the chosen subnet), timed;
2. ``das-tune retrain --study easyvqa_minilm --skip none --seed S`` for every seed: the full model with
   adapters under the same retrain budget, for the figure to compare with and its seed-to-seed spread;

and writes one JSON: the machine, each command's wall-clock and CPU time (children's rusage) and the
load average around it, the run's ``metrics.json`` and ``subnet.json``, the val accuracy of every retrain
epoch (from the run's log), test accuracy by question type (yes/no, colour, shape) of the chosen subnet and
of the full model, and the packaged pre-training's last evaluation. README's main-job table is checked
against this file (tests/test_main_job_readme.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from das_tune.jobs.pretrain import COLOURS
from das_tune.subnet.load import load_subnet
from das_tune.tasks.easyvqa import EasyVQATask

STUDY = "easyvqa_minilm"
PRETRAINING_LOG = Path(__file__).resolve().parents[1] / "das_tune" / "weights" / "minilm_vl.log.json"
EPOCH_LINE = re.compile(r"retrain epoch (\d+): val accuracy ([0-9.]+)")


def timed(args: list[str], cwd: Path) -> dict:
    """Run ``das-tune ARGS`` in ``cwd``; its wall-clock, CPU time, load average and val-by-epoch log.
    A command already measured in ``cwd`` (``main_job_steps.json``) is not run again: the
    measurement can be done in pieces."""
    steps_file = cwd / "main_job_steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    key = " ".join(args)
    if key not in steps:
        steps[key] = _run_timed(args, cwd)
        steps_file.write_text(json.dumps(steps, indent=2) + "\n")
    return steps[key]


def _run_timed(args: list[str], cwd: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "das_tune.cli", *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"das-tune {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    epochs = [float(v) for _, v in EPOCH_LINE.findall(done.stdout + done.stderr)]
    return {
        "command": "das-tune " + " ".join(args), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)], "val_by_epoch": epochs,
    }


def by_question_type(run_dir: Path) -> dict[str, dict[str, float]]:
    """Test accuracy of the run folder's model on yes/no, colour and shape questions."""
    model = load_subnet(run_dir)
    task = EasyVQATask(val_limit=1, test_limit=1000)
    examples = task.examples("test")
    predictions = model.predict_batch([{"question": e.question, "image": e.image} for e in examples], batch_size=128)
    right: dict[str, list[bool]] = {}
    for example, prediction in zip(examples, predictions, strict=True):
        answer = task.answers[example.label]
        kind = "yes/no" if answer in ("yes", "no") else "colour" if answer in COLOURS else "shape"
        right.setdefault(kind, []).append(prediction.label == answer)
    return {kind: {"accuracy": sum(r) / len(r), "questions": len(r)} for kind, r in sorted(right.items())}


def machine() -> dict:
    """What the figures depend on: float rounding differs between CPU models (their BLAS kernels) and
    thread counts, so a near-tied pick or the last digit of an accuracy may differ on another machine."""
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return {
        "cpus": os.cpu_count(), "cpu_model": models[0] if models else platform.processor(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "torch": torch.__version__,
    }


def measure(work: Path, seeds: list[int]) -> dict:
    run = timed(["run", "--study", STUDY], work)
    run_dir = work / "runs" / f"{STUDY}-das-seed0"
    result = {
        "machine": machine(),
        "main_command": run,
        "run": json.loads((run_dir / "metrics.json").read_text()),
        "search": json.loads((run_dir / "subnet.json").read_text()),
        "run_by_question_type": by_question_type(run_dir),
        "full_model": [],
    }
    for seed in seeds:
        retrain = timed(["retrain", "--study", STUDY, "--skip", "none", "--seed", str(seed)], work)
        full_dir = work / "runs" / f"{STUDY}-skip-none-seed{seed}"
        metrics = json.loads((full_dir / "metrics.json").read_text())
        result["full_model"].append({"seed": seed, "value": metrics["value"], "best_epoch": metrics["best_epoch"], **retrain,
                                     "metrics": metrics})
        if seed == seeds[0]:
            result["full_by_question_type"] = by_question_type(full_dir)
    values = [r["value"] for r in result["full_model"]]
    if values:
        result["full_model_summary"] = {
            "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values)
        }
    entries = [e for e in json.loads(PRETRAINING_LOG.read_text())["entries"] if "eval" in e]
    result["pretraining"] = {"steps": entries[-1]["step"], "seconds": entries[-1]["seconds"], "final": entries[-1]["eval"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the full-model retrains ('none': no full model)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the measurement here")
    args = parser.parse_args()
    seeds = [] if args.seeds == "none" else [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(work, seeds)
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text)
    print(f"main job: test accuracy {result['run']['value']:.3f} in {result['main_command']['wall_seconds']:.0f} s")
    if summary := result.get("full_model_summary"):
        print(f"full model: {summary['mean']:.3f} ± {summary['std']:.3f} over {summary['seeds']} seeds")


if __name__ == "__main__":
    main()
