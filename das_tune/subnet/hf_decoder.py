"""``das-tune export --format hf`` for decoder backbones: a causal LM folder with fewer layers.

The folder is a plain transformers model: ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it and its
``generate()`` gives the subnet's greedy tokens, with or without the KV cache. What makes that true:

* the kept layers are built fresh from a shortened config, so their ``layer_idx`` (the KV cache slot)
  runs 0 … k-1 with no gaps;
* ``num_hidden_layers`` is k, every per-layer list of the config (``layer_types`` and any list as long as
  the old layer count) keeps the kept layers' entries, and ``max_window_layers`` counts kept layers;
* LoRA is merged into the base weights (a plain model cannot hold parallel adapters or skip-adapters:
  those need a space with ``skip_adapter_width: 0`` and ``petl: lora``);
* in a sublayer space, a layer with both blocks skipped is removed; a layer with one block skipped keeps
  that block with all its weights zero, so it adds exactly nothing (its compute is still spent).

The task head (the LM-head label rows of ``sst2_lm``, none for ``scienceqa``) goes beside it in
``das_tune_head.json`` / ``das_tune_head.safetensors``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from das_tune.backbones.adapters import SkippableLayer
from das_tune.backbones.decoder import AdaptedAttention, AdaptedMLP, DecoderBackbone, SplitDecoderLayer
from das_tune.backbones.processing import load_tokenizer
from das_tune.errors import UserError
from das_tune.subnet.portable import HF_HEAD_CONFIG, HF_HEAD_WEIGHTS


def check_decoder_hf(backbone: DecoderBackbone) -> None:
    widened = [layer.name for layer in backbone.candidates().values() if layer.skipped and layer.skip_adapter is not None]
    if widened:
        raise UserError(
            f"--format hf: skipped blocks {', '.join(widened)} have skip-adapters; a plain Hugging Face model needs a "
            "space with skip_adapter_width: 0 (plain layer removal)"
        )
    if any(isinstance(m, AdaptedAttention | AdaptedMLP) for m in backbone.modules()):
        raise UserError(
            "--format hf: the kept layers carry parallel adapters, which a plain Hugging Face model cannot hold; "
            "use backbone option petl: lora (merged into the weights)"
        )


def layer_parts(slot: nn.Module) -> tuple[list[nn.Module | None], bool]:
    """A ``model.layers`` slot of the subnet as the kept blocks to load (``None``: a skipped block to zero),
    and whether anything of it is kept."""
    if isinstance(slot, SplitDecoderLayer):
        blocks = [None if half.skipped else half.layer for half in (slot.attention, slot.mlp)]
        return blocks, any(block is not None for block in blocks)
    assert isinstance(slot, SkippableLayer)
    return [None if slot.skipped else slot.layer], not slot.skipped


def shortened_config(config: Any, kept: list[int]) -> Any:
    """``config`` for the layers ``kept`` (old indices, in order): the count, per-layer lists, window layers."""
    old = config.num_hidden_layers
    short = copy.deepcopy(config)
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == old and key != "architectures":
            setattr(short, key, [value[i] for i in kept])
    if isinstance(getattr(config, "max_window_layers", None), int):
        short.max_window_layers = sum(1 for i in kept if i < config.max_window_layers)
    short.num_hidden_layers = len(kept)
    return short


def write_hf_decoder(backbone: DecoderBackbone, head: dict[str, Any], out: Path, merge: Callable[[nn.Module], nn.Module]) -> None:
    """The causal LM folder of ``backbone`` (an exported subnet) into ``out``; ``merge`` merges LoRA into a copy."""
    from transformers import AutoModelForCausalLM

    slots = [layer_parts(slot) for slot in backbone.causal_lm.model.layers]
    kept = [i for i, (_, any_kept) in enumerate(slots) if any_kept]
    config = shortened_config(backbone.lm_config, kept)
    model = AutoModelForCausalLM.from_config(config, dtype=backbone.causal_lm.dtype).eval()
    state = {k: v for k, v in backbone.causal_lm.state_dict().items() if not k.startswith("model.layers.")}
    zeroed = []
    for new, old in enumerate(kept):
        target = model.model.layers[new]
        blocks = slots[old][0]
        for block in blocks:
            if block is not None:
                state |= {f"model.layers.{new}.{k}": v for k, v in merge(block).state_dict().items()}
        if len(blocks) == 2 and None in blocks:  # one block of a sublayer pair skipped: zero it
            kind = ("A", "self_attn", "input_layernorm") if blocks[0] is None else ("F", "mlp", "post_attention_layernorm")
            zeroed.append(f"{kind[0]}{old}")
            for part in kind[1:]:
                state |= {f"model.layers.{new}.{part}.{k}": torch.zeros_like(v) for k, v in getattr(target, part).state_dict().items()}
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(out))
    load_tokenizer(backbone.tokenizer_path).save_pretrained(str(out))
    extra = {**head, "pooling": "last token", "kept_layers": kept, "zeroed_blocks": zeroed}
    (out / HF_HEAD_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
    weights = {k: v.contiguous() for k, v in backbone.task_head.state_dict().items()}
    save_file(weights, str(out / HF_HEAD_WEIGHTS))
