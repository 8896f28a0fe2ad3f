"""The skip switch, freezing and export shared by every backbone built from :class:`SkippableLayer`s."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from das_tune.backbones.adapters import Adapter, SkippableLayer
from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError


class LayerSkipBackbone(SkippableBackbone):
    """A backbone whose candidates are the :class:`SkippableLayer` modules inside it.

    Subclasses build their modules, then call :meth:`freeze` with the extra modules that train.
    """

    def candidates(self) -> dict[str, SkippableLayer]:
        return {m.name: m for m in self.modules() if isinstance(m, SkippableLayer)}

    def set_skipped(self, names: Iterable[str]) -> None:
        names = set(names)
        layers = self.candidates()
        unknown = sorted(names - layers.keys())
        if unknown:
            raise UserError(
                f"unknown layer name(s) {', '.join(unknown)}; this backbone's layers are {', '.join(self.layer_names)}"
            )
        for name, layer in layers.items():
            layer.set_skipped(name in names)

    @property
    def skipped(self) -> frozenset[str]:
        return frozenset(name for name, layer in self.candidates().items() if layer.skipped)

    def export(self, names: Iterable[str]) -> LayerSkipBackbone:
        subnet = copy.deepcopy(self)
        subnet.set_skipped(names)
        for layer in subnet.candidates().values():
            layer.freeze_choice()
        return subnet

    def freeze(self, extras: Iterable[nn.Module] = ()) -> None:
        """Freeze everything but adapters, skip-adapters, LoRA weights and ``extras``."""
        self.requires_grad_(False)
        for module in [*extras, *(m for m in self.modules() if isinstance(m, Adapter))]:
            module.requires_grad_(True)
        for name, param in self.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)


def extend_rows(table: nn.Embedding, rows: int) -> nn.Embedding:
    """``table`` with at least ``rows`` rows, the new ones copies of its last row (NLVR2's token types)."""
    if table.num_embeddings >= rows:
        return table
    extended = nn.Embedding(rows, table.embedding_dim).to(table.weight.device)
    with torch.no_grad():
        extended.weight[: table.num_embeddings] = table.weight
        extended.weight[table.num_embeddings :] = table.weight[-1]
    extended.weight.requires_grad_(table.weight.requires_grad)
    return extended


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, keys]`` 1/0 mask → ``[batch, 1, 1, keys]`` additive attention mask."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def check_petl(petl: str) -> None:
    if petl not in ("adapter", "lora"):
        raise UserError(f"unknown petl {petl!r}; expected 'adapter' or 'lora'")
