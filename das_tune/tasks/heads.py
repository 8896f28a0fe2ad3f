"""Task heads as the METER/ViLT reference builds them."""

from __future__ import annotations

import torch
from torch import nn


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Lin(in, hidden) - LayerNorm - GELU - Lin(hidden, out): METER's VQA and NLVR2 classifiers."""
    head = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )
    head.apply(init_weights)
    return head


def sentence_head(dim: int, out_dim: int) -> nn.Sequential:
    """Lin(d, d) - tanh - Lin(d, out): RoBERTa's GLUE classification head."""
    head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))
    head.apply(init_weights)
    return head


MATCH = 1  # the "match" row of an ITM head


class RetrievalHead(nn.Module):
    """METER/ViLT's retrieval heads: ``itm`` (Lin(d, 2), "no match"/"match" logits) and ``rank_output``
    (Lin(d, 1), the IR/TR score), initialised from the ITM "match" row. Called, it gives the score.

    With a pre-trained ITM head (``pretrained_itm``, a state dict) the ITM head is loaded and frozen,
    as the reference does; without one it starts random and trains.
    """

    def __init__(self, dim: int, pretrained_itm: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.itm = nn.Linear(dim, 2)
        self.rank_output = nn.Linear(dim, 1)
        init_weights(self.itm)
        if pretrained_itm is not None:
            self.itm.load_state_dict(pretrained_itm)
            self.itm.requires_grad_(False)
        with torch.no_grad():
            self.rank_output.weight.copy_(self.itm.weight[MATCH:MATCH + 1])
            self.rank_output.bias.copy_(self.itm.bias[MATCH:MATCH + 1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.rank_output(features)[:, 0]
