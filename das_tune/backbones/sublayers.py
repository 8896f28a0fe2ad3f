"""Sublayer candidates: a transformer layer's attention block and feed-forward block as two candidates.

With ``granularity="sublayer"`` a backbone's candidates are ``A<i>`` (layer i's self-attention block,
its residual and normalisation included) and ``F<i>`` (its feed-forward block, likewise), in model
order ``A0, F0, A1, F1, …``. Each is a :class:`SkippableLayer` of its own: skipped, it becomes
``x + skip_adapter(x)``; kept, it runs with its own parallel adapter. Both blocks are called as
``block(x, mask)`` like whole layers; the feed-forward blocks ignore the mask.
"""

from __future__ import annotations

import torch
from torch import nn

from das_tune.backbones.adapters import SkippableLayer
from das_tune.errors import UserError

GRANULARITIES = ("layer", "sublayer")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; expected 'layer' or 'sublayer'")


def sublayer_width(granularity: str, skip_width: int | None, adapter_width: int) -> int:
    """A skipped block's skip-adapter width: by default the width of the adapters it replaces (a whole
    layer carries two parallel adapters, a sublayer one)."""
    if skip_width is not None:
        return skip_width
    return adapter_width * (2 if granularity == "layer" else 1)


class PostNormFeedForward(nn.Module):
    """BERT's feed-forward block: ``LayerNorm(x + FFN(x))`` (``output`` adds and normalises)."""

    def __init__(self, intermediate: nn.Module, output: nn.Module) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.output = output

    def forward(self, x: torch.Tensor, *ignored) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


class PreNormAttention(nn.Module):
    """ViLT's attention block: ``x + Attention(LayerNorm(x))``, plus DAS's parallel adapter reading ``x``
    when there is one (see ``vilt.AdaptedBlock``)."""

    def __init__(self, norm: nn.Module, attention: nn.Module, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.attention = attention
        self.adapter = adapter

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = x + self.attention(self.norm(x), mask)[0]
        return out if self.adapter is None else out + self.adapter(x)


class PreNormFeedForward(nn.Module):
    """ViLT's feed-forward block: ``x + FFN(LayerNorm(x))`` (``output`` adds the residual), plus DAS's
    parallel adapter reading ``x`` when there is one."""

    def __init__(self, norm: nn.Module, intermediate: nn.Module, output: nn.Module, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.intermediate = intermediate
        self.output = output
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *ignored) -> torch.Tensor:
        out = self.output(self.intermediate(self.norm(x)), x)
        return out if self.adapter is None else out + self.adapter(x)


def bert_sublayers(layer: nn.Module, i: int, dim: int, skip_width: int) -> list[SkippableLayer]:
    """``A<i>``, ``F<i>`` of a post-LN BertLayer/RobertaLayer (``BertAttention`` is already the block)."""
    return [
        SkippableLayer(f"A{i}", layer.attention, dim, skip_width),
        SkippableLayer(f"F{i}", PostNormFeedForward(layer.intermediate, layer.output), dim, skip_width),
    ]


def vilt_sublayers(
    layer: nn.Module, i: int, dim: int, skip_width: int, adapters: tuple[nn.Module | None, nn.Module | None] = (None, None)
) -> list[SkippableLayer]:
    """``A<i>``, ``F<i>`` of a pre-LN ViltLayer; ``adapters``: the layer's two parallel adapters (attention,
    feed-forward), if it has them."""
    return [
        SkippableLayer(f"A{i}", PreNormAttention(layer.layernorm_before, layer.attention, adapters[0]), dim, skip_width),
        SkippableLayer(
            f"F{i}", PreNormFeedForward(layer.layernorm_after, layer.intermediate, layer.output, adapters[1]), dim, skip_width
        ),
    ]
