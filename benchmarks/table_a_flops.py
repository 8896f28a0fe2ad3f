"""Table A of the DAS paper: additional FLOPs (GMACs) of full-size METER and ViLT subnets, ours vs the paper.

Random weights (METER on the meta device); VQA sizes: batch 1, 384×384 image, 40 text tokens. "Additional"
is relative to the original model without adapters. Our counts cover matmuls, convolutions and attention
(FlopCounterMode); the paper's fvcore count also includes LayerNorm and a few element-wise ops.
Last line: mean |ours / paper| over the skip sets' deltas.
"""

from __future__ import annotations

import torch

from das_tune.backbones import build_backbone
from das_tune.backbones.flops import CostModel

# (skip set, paper's additional GMACs) from Table A (VQA).
METER_ROWS = [
    ([], 1.68), (["FV0", "FV4"], -9.06), (["FL2", "FL3", "FV0", "FV5"], -11.16),
    (["FL1", "FL2", "FL3", "FV0", "FV4", "FV5"], -17.58), (["FV0", "LEn6"], -3.96),
]
VILT_ROWS = [([], 0.73), (["En3"], -1.03), (["En5", "En11"], -2.79)]


def rows(name: str, costs: CostModel, table: list) -> list[float]:
    base = costs.cost([])
    print(f"{name}: {base.macs / 1e9:.2f} GMACs with adapters, {costs.original_flops / 2e9:.2f} GMACs original")
    print(f"  {'skipped':<34} {'ours GMACs':>10} {'paper':>8} {'ours GFLOPs':>12}")
    ratios = []
    for skipped, paper in table:
        cost = costs.cost(skipped)
        ours = cost.additional_gmacs
        print(f"  {', '.join(skipped) or '(adapters only)':<34} {ours:>10.2f} {paper:>8.2f} {cost.additional_flops / 1e9:>12.2f}")
        if skipped:
            ratios.append(abs(ours / paper))
    return ratios


def main() -> None:
    with torch.device("meta"):
        meter = build_backbone("meter", random_weights=True, image_size=384, max_text_len=40)
    ratios = rows("METER", CostModel(meter), METER_ROWS)
    vilt = build_backbone("vilt", random_weights=True, image_size=384, max_text_len=40)
    ratios += rows("ViLT", CostModel(vilt), VILT_ROWS)
    print(f"mean |ours/paper| over skip-set additional GMACs: {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
