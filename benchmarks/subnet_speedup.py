"""Inference speed-up of exported subnets relative to their FLOPs reduction (minilm_vl, batch 64).

For 1, 2 and 4 skipped layers: speed-up = latency(full) / latency(subnet), FLOPs reduction =
FLOPs(full) / FLOPs(subnet); goal: speed-up / FLOPs reduction ≥ 0.9. Runs on the CPU, and on the GPU
too when there is one. Last line: the mean ratio on the CPU.
"""

from __future__ import annotations

import torch

from das_tune.backbones import build_backbone
from das_tune.backbones.flops import count_flops, measure_latency

SKIPS = [["En3"], ["En2", "En4"], ["En1", "En2", "En3", "En4"]]


def ratios(device: str, repeats: int) -> list[float]:
    model = build_backbone("minilm_vl").to(device)
    inputs = {k: v.to(device) for k, v in model.example_inputs(64).items()}
    full_flops, full_time = count_flops(model, inputs), measure_latency(model, inputs, repeats).median
    print(f"{device}: full model {full_time * 1e3:.1f} ms, {full_flops / 2e9:.2f} GMACs")
    out = []
    for skipped in SKIPS:
        subnet = model.export(skipped)
        speedup = full_time / measure_latency(subnet, inputs, repeats).median
        reduction = full_flops / count_flops(subnet, inputs)
        out.append(speedup / reduction)
        print(f"  skip {len(skipped)}: speed-up {speedup:.2f}x, FLOPs reduction {reduction:.2f}x, ratio {out[-1]:.2f}")
    return out


def main() -> None:
    if torch.cuda.is_available():
        gpu = ratios("cuda", repeats=50)
        print(f"GPU mean speed-up / FLOPs reduction: {sum(gpu) / len(gpu):.3f}")
    cpu = ratios("cpu", repeats=10)
    print(f"CPU mean speed-up / FLOPs reduction: {sum(cpu) / len(cpu):.3f}")


if __name__ == "__main__":
    main()
