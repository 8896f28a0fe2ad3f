"""Table A of the DAS paper: additional FLOPs (GMACs) of full-size METER and ViLT subnets, ours vs the paper.

Random weights (METER on the meta device); VQA sizes, batch 1, 40 text tokens: METER a 384×384 image
(577 visual tokens), ViLT its own convention (384×640, 200 sampled patches + CLS: 241 tokens). "Additional"
is relative to the original model without adapters; a skip set's "delta" is what skipping it changes
against the model with all its adapters. Our counts cover matmuls, convolutions and attention
(FlopCounterMode); the paper's fvcore count also includes LayerNorm and a few element-wise ops.
Last line: mean ours / paper over the skip sets' deltas.
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
    """Prints the additional GMACs and skip deltas of ``table``'s skip sets; returns ours/paper per delta."""
    base = costs.cost([])
    print(f"{name}: {base.macs / 1e9:.2f} GMACs with adapters, {costs.original_flops / 2e9:.2f} GMACs original")
    print(f"  {'skipped':<30} {'ours GMACs':>10} {'paper':>7} {'ours delta':>10} {'paper':>7} {'ratio':>6} {'ours GFLOPs':>11}")
    ours_base, paper_base = base.additional_gmacs, table[0][1]
    ratios = []
    for skipped, paper in table:
        cost = costs.cost(skipped)
        ours = cost.additional_gmacs
        line = f"  {', '.join(skipped) or '(adapters only)':<30} {ours:>10.2f} {paper:>7.2f}"
        if skipped:
            ratio = (ours - ours_base) / (paper - paper_base)
            line += f" {ours - ours_base:>10.2f} {paper - paper_base:>7.2f} {ratio:>6.3f}"
            ratios.append(ratio)
        else:
            line += f" {'':>10} {'':>7} {'':>6}"
        print(line + f" {cost.additional_flops / 1e9:>11.2f}")
    return ratios


def main() -> None:
    with torch.device("meta"):
        meter = build_backbone("meter", random_weights=True, image_size=384, max_text_len=40)
    meter_ratios = rows("METER", CostModel(meter), METER_ROWS)
    vilt = build_backbone("vilt", random_weights=True, image_size=384, max_text_len=40)
    torch.manual_seed(0)  # ViLT samples its 200 patches at random
    vilt_ratios = rows("ViLT", CostModel(vilt), VILT_ROWS)
    for name, ratios in (("METER", meter_ratios), ("ViLT", vilt_ratios)):
        print(f"{name}: skip deltas within {max(abs(r - 1) for r in ratios):.1%} of Table A")
    ratios = meter_ratios + vilt_ratios
    print(f"mean ours/paper over skip-set deltas: {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
