"""Skippable backbones by name: ``build_backbone("minilm_vl", tiny=True)``."""

from __future__ import annotations

from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.bert import MiniLM, TextEncoderBackbone
from das_tune.backbones.decoder import DecoderBackbone, MistralBackbone, Qwen2Backbone
from das_tune.backbones.meter import MeterBackbone
from das_tune.backbones.vilt import ViltBackbone
from das_tune.backbones.vl_bert import MiniLMVL, SingleStreamVL
from das_tune.errors import UserError

# name → class; ``cls.build(checkpoint=None, tiny=False, **options)``, ``cls.tiny_ignores``
BACKBONES: dict[str, type[SkippableBackbone]] = {
    "bert": TextEncoderBackbone,
    "minilm": MiniLM,
    "bert_vl": SingleStreamVL,
    "minilm_vl": MiniLMVL,
    "meter": MeterBackbone,
    "vilt": ViltBackbone,
    "llama": DecoderBackbone,
    "mistral": MistralBackbone,
    "qwen2": Qwen2Backbone,
}


def build_backbone(
    name: str, checkpoint: str | None = None, tiny: bool = False, task_head: nn.Module | None = None, **options
) -> SkippableBackbone:
    """Build the backbone ``name`` (random tiny, or from a local ``checkpoint``), with an optional head."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; expected one of {', '.join(sorted(BACKBONES))}")
    try:
        backbone = BACKBONES[name].build(checkpoint=checkpoint, tiny=tiny, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise UserError(f"backbone {name!r} does not take that option ({error})") from None
    backbone.task_head = task_head
    backbone.built_with = {"name": name, "tiny": tiny, "options": options}  # what an export rebuilds from
    return backbone


__all__ = [
    "BACKBONES", "DecoderBackbone", "MeterBackbone", "MiniLM", "MiniLMVL", "MistralBackbone", "Qwen2Backbone",
    "SingleStreamVL", "SkippableBackbone", "TextEncoderBackbone", "ViltBackbone", "build_backbone",
]
