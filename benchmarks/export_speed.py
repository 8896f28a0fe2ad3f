"""CPU latency and size on disk: the full model, the PyTorch subnet and the ONNX subnet of a run.

    python benchmarks/export_speed.py [RUN_DIR] [--repeats N] [--json FILE]

RUN_DIR defaults to the README's main job (runs/easyvqa_minilm-das-seed0, written by
``das-tune run --study easyvqa_minilm``); any run folder or exported subnet folder works. The full
model is the same backbone with every layer kept (adapters and head included), rebuilt with random
weights: latency does not depend on the values. Inputs are the backbone's ``example_inputs`` (the
sizes metrics.json's latency uses), at batch 1 and 32. Sizes are the weights files on disk:
safetensors for the full model and the subnet, the .onnx graph (with any external data) for ONNX.
Last line: the ONNX subnet's batch-1 speed-up over the full model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model

from das_tune.errors import UserError
from das_tune.subnet.export import ONNX_FILE, export_subnet, median_seconds, onnx_session, subnet_config
from das_tune.subnet.load import load_subnet
from das_tune.subnet.portable import WEIGHTS_FILE, rebuild_backbone

MAIN_JOB = Path("runs/easyvqa_minilm-das-seed0")
BATCH_SIZES = (1, 32)


def folder_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def measure(run_dir: Path, repeats: int) -> dict:
    subnet = load_subnet(run_dir)
    config = subnet_config(subnet, run_dir)
    full = rebuild_backbone(config.model_copy(update={"skipped": []}), Path("unused")).eval()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        save_model(full, str(scratch / "full.safetensors"))
        export_subnet(run_dir, scratch / "subnet")
        export_subnet(run_dir, scratch / "onnx", "onnx")
        sizes = {
            "full": folder_bytes([scratch / "full.safetensors"]),
            "subnet": folder_bytes([scratch / "subnet" / WEIGHTS_FILE]),
            "onnx": folder_bytes([p for p in (scratch / "onnx").iterdir() if p.name.startswith(ONNX_FILE)]),
        }
        session = onnx_session(scratch / "onnx" / ONNX_FILE)
        names = [i.name for i in session.get_inputs()]
        latency = {}
        for size in BATCH_SIZES:
            inputs = subnet.backbone.example_inputs(size)
            for name in names:  # e.g. token_type_ids, which the graph takes and example_inputs leaves out
                inputs.setdefault(name, torch.zeros_like(inputs["input_ids"]))
            feed = {name: inputs[name].numpy() for name in names}
            latency[str(size)] = {
                "full": median_seconds(lambda: full(**inputs), repeats) * 1e3,
                "subnet": median_seconds(lambda: subnet(**inputs), repeats) * 1e3,
                "onnx": median_seconds(lambda: session.run(None, feed), repeats) * 1e3,
            }
    return {
        "run": str(run_dir), "skipped": config.skipped, "threads": torch.get_num_threads(),
        "repeats": repeats, "latency_ms": latency, "size_bytes": sizes,
    }


def report(result: dict) -> None:
    print(f"{result['run']}: skipped {', '.join(result['skipped'])}; CPU, {result['threads']} threads, median of {result['repeats']}")
    for size, row in result["latency_ms"].items():
        cells = [f"{name} {ms:.2f} ms ({row['full'] / ms:.2f}x)" for name, ms in row.items()]
        print(f"  batch {size:>2}: " + ", ".join(cells))
    sizes = result["size_bytes"]
    print("  size on disk: " + ", ".join(f"{name} {b / 1e6:.2f} MB ({b / sizes['full']:.1%})" for name, b in sizes.items()))
    speedup = result["latency_ms"]["1"]["full"] / result["latency_ms"]["1"]["onnx"]
    print(f"ONNX subnet speed-up over the full model, batch 1, CPU: {speedup:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=MAIN_JOB)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.run_dir == MAIN_JOB and not MAIN_JOB.exists():
        print(f"error: {MAIN_JOB} not found; run the main job first: das-tune run --study easyvqa_minilm", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    try:
        result = measure(args.run_dir, args.repeats)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
