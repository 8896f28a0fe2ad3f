"""Skippable backbones by name: ``build_backbone("minilm_vl", tiny=True)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.bert import TextEncoderBackbone, build_bert, build_minilm
from das_tune.backbones.meter import MeterBackbone, build_meter
from das_tune.backbones.vilt import ViltBackbone, build_vilt
from das_tune.backbones.vl_bert import SingleStreamVL, build_bert_vl, build_minilm_vl
from das_tune.errors import UserError

# name → factory(checkpoint=None, tiny=False, **options)
BACKBONES: dict[str, Callable[..., SkippableBackbone]] = {
    "bert": build_bert,
    "minilm": build_minilm,
    "bert_vl": build_bert_vl,
    "minilm_vl": build_minilm_vl,
    "meter": build_meter,
    "vilt": build_vilt,
}


def build_backbone(
    name: str, checkpoint: str | None = None, tiny: bool = False, task_head: nn.Module | None = None, **options
) -> SkippableBackbone:
    """Build the backbone ``name`` (random tiny, or from a local ``checkpoint``), with an optional head."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; expected one of {', '.join(sorted(BACKBONES))}")
    try:
        backbone = BACKBONES[name](checkpoint=checkpoint, tiny=tiny, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise UserError(f"backbone {name!r} does not take that option ({error})") from None
    backbone.task_head = task_head
    backbone.built_with = {"name": name, "tiny": tiny, "options": options}  # what an export rebuilds from
    return backbone


__all__ = [
    "BACKBONES", "MeterBackbone", "SingleStreamVL", "SkippableBackbone", "TextEncoderBackbone", "ViltBackbone",
    "build_backbone",
]
