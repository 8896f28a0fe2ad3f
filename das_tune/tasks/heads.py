"""Task heads as the METER/ViLT reference builds them."""

from __future__ import annotations

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


def itm_head(dim: int) -> nn.Linear:
    """Lin(d, 2): image-text matching ("no match", "match") logits, METER's ``itm_score``."""
    head = nn.Linear(dim, 2)
    init_weights(head)
    return head
