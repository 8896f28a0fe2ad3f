"""Per-layer GMACs of a full-size LLaMA-7B (config only, built on the meta device: no weights), measured by
das-tune's CostModel against the analytic count.

The model is the LLaMA-7B configuration (32 layers, width 4096, MLP 11008, 32 heads, vocabulary 32000) as
das-tune's ``llama`` backbone wraps it for plain layer removal (skip-adapter width 0, LoRA rank 8 on
q_proj and v_proj). A layer's measured GMACs are what skipping it saves (``-CostModel.delta_flops / 2``,
FlopCounterMode: 2 FLOPs per multiply-add). The analytic count per layer and sequence of T tokens is
T × (the layer's matmul parameters, LoRA included) — "2 × parameters per token" in FLOPs — plus attention's
two T × T × width products (QKᵀ and the weighted sum of V, the full score matrix, as the counter counts
it, without halving for the causal mask). Norms and element-wise work are counted by neither. Attention is
eager: on the meta device transformers' SDPA mask shortcut would read the mask's values.
Writes benchmarks/decoder_flops.json; the last line is the largest measured / analytic deviation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from das_tune.backbones.decoder import DecoderBackbone
from das_tune.backbones.flops import CostModel

SEQUENCE_LENGTHS = (128, 512, 2048)
OUT = Path(__file__).with_suffix(".json")


def llama_7b() -> DecoderBackbone:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=2048,
    )
    with torch.device("meta"):
        causal_lm = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        return DecoderBackbone(causal_lm, "unused", skip_adapter_width=0, petl="lora", lora_rank=8, max_text_len=2048)


def matmul_params(layer: torch.nn.Module) -> int:
    """Parameters of the layer's linear maps (LoRA's included), not its norms."""
    return sum(p.numel() for name, p in layer.named_parameters() if p.dim() == 2)


def main(lengths: tuple[int, ...] = SEQUENCE_LENGTHS, out: Path | None = OUT) -> float:
    """Prints the table, writes ``out`` (unless None) and returns the largest deviation."""
    backbone = llama_7b()
    layer = backbone.candidates()["L0"].layer
    params, width = matmul_params(layer), backbone.lm_config.hidden_size
    print(f"LLaMA-7B on the meta device: {len(backbone.layer_names)} layers, {params / 1e6:.1f} M matmul parameters per layer")
    header = ("tokens", "measured GMACs/layer", "analytic", "params×T", "attention", "deviation", "all layers same")
    print("  " + " ".join(f"{h:>{w}}" for h, w in zip(header, (6, 21, 9, 9, 9, 9, 15))))
    rows = []
    for tokens in lengths:
        inputs = {name: torch.ones(1, tokens, dtype=torch.long, device="meta") for name in ("input_ids", "attention_mask")}
        costs = CostModel(backbone, inputs)
        measured = {name: -delta / 2e9 for name, delta in costs.delta_flops.items()}
        linear, attention = params * tokens / 1e9, 2 * tokens * tokens * width / 1e9
        analytic = linear + attention
        deviation = max(abs(m / analytic - 1) for m in measured.values())
        same = max(measured.values()) - min(measured.values()) < 1e-9
        print(f"  {tokens:>6} {measured['L0']:>21.3f} {analytic:>9.3f} {linear:>9.3f} {attention:>9.3f} {deviation:>9.3%} {str(same):>15}")
        rows.append({"tokens": tokens, "measured_gmacs_per_layer": measured["L0"], "analytic_gmacs": analytic,
                     "params_x_tokens_gmacs": linear, "attention_gmacs": attention, "deviation": deviation,
                     "model_gmacs": costs.cost([]).macs / 1e9})
    worst = max(row["deviation"] for row in rows)
    if out is not None:
        record = {"model": "LLaMA-7B config (meta device)", "matmul_params_per_layer": params, "rows": rows}
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"largest deviation of measured from analytic per-layer GMACs: {worst:.3%} (goal: within 2 %)")
    return worst


if __name__ == "__main__":
    main()
