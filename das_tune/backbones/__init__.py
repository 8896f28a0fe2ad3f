"""Skippable backbones by name: ``build_backbone("minilm_vl", tiny=True)``.

A backbone's module is imported when the backbone is first used, so importing this package (and its
torch-free parts, such as ``backbones.cost``) does not import torch: the CLI refuses bad input fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from das_tune.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from das_tune.backbones.base import SkippableBackbone

# name → (module under das_tune.backbones, class); ``cls.build(checkpoint=None, tiny=False, **options)``, ``cls.tiny_ignores``
REGISTRY: dict[str, tuple[str, str]] = {
    "bert": ("bert", "TextEncoderBackbone"),
    "minilm": ("bert", "MiniLM"),
    "bert_vl": ("vl_bert", "SingleStreamVL"),
    "minilm_vl": ("vl_bert", "MiniLMVL"),
    "meter": ("meter", "MeterBackbone"),
    "vilt": ("vilt", "ViltBackbone"),
    "llama": ("decoder", "DecoderBackbone"),
    "mistral": ("decoder", "MistralBackbone"),
    "qwen2": ("decoder", "Qwen2Backbone"),
}
_CLASSES = {cls: module for module, cls in REGISTRY.values()} | {"SkippableBackbone": "base"}


def backbone_class(name: str) -> type[SkippableBackbone]:
    """The class registered as ``name`` (its module imported now)."""
    if name not in REGISTRY:
        raise UserError(f"unknown backbone {name!r}; expected one of {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(f"das_tune.backbones.{module}"), cls)


def build_backbone(
    name: str, checkpoint: str | None = None, tiny: bool = False, task_head: nn.Module | None = None, **options: Any
) -> SkippableBackbone:
    """Build the backbone ``name`` (random tiny, or from a local ``checkpoint``), with an optional head."""
    cls = backbone_class(name)
    try:
        backbone = cls.build(checkpoint=checkpoint, tiny=tiny, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise UserError(f"backbone {name!r} does not take that option ({error})") from None
    backbone.task_head = task_head
    backbone.built_with = {"name": name, "tiny": tiny, "options": options}  # what an export rebuilds from
    return backbone


def __getattr__(name: str) -> Any:
    """The backbone classes, imported on first access (``from das_tune.backbones import MiniLMVL``)."""
    if name in _CLASSES:
        return getattr(importlib.import_module(f"das_tune.backbones.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY", "backbone_class", "build_backbone", *sorted(_CLASSES)]
