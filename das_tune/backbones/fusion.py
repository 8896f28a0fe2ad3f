"""METER's co-attention fusion layer: self-attention → cross-attention to the other stream → FFN.

Sub-module names follow the official checkpoint (``attention.self.query`` ... ``output.LayerNorm``), so
loading it is a prefix rename. Post-LN, LayerNorm eps 1e-12, exact GELU, dropout 0.1 on the attention
probabilities and on each output block's dense (METER's ``BertCrossLayer`` with ``drop_rate`` 0.1);
adapters are added after the weights are loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from das_tune.backbones.adapters import Adapter, ParallelAdapter


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """``LayerNorm(dropout(dense(hidden)) + residual)`` (BERT's output block)."""

    def __init__(self, dim_in: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim)
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self = MultiHeadAttention(dim, heads, dropout)
        self.output: nn.Module = AddNorm(dim, dim, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, context, mask), x)


class Intermediate(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class FusionLayer(nn.Module):
    """Updates one stream ``x`` from itself and the other stream ``other`` (both from the previous layer)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.attention = AttentionBlock(dim, heads, dropout)
        self.crossattention = AttentionBlock(dim, heads, dropout)
        self.intermediate = Intermediate(dim, ffn)
        self.output: nn.Module = AddNorm(ffn, dim, dropout)

    def add_adapters(self, width: int) -> None:
        """DAS's three parallel adapters: self- and cross-attention outputs, and beside the FFN."""
        dim = self.dim
        self.attention.output = ParallelAdapter(self.attention.output, Adapter(dim, width))
        self.crossattention.output = ParallelAdapter(self.crossattention.output, Adapter(dim, width))
        self.output = ParallelAdapter(self.output, Adapter(dim, width), into_residual=False)

    def forward(
        self, x: torch.Tensor, other: torch.Tensor, x_mask: torch.Tensor, other_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.attention(x, x, x_mask)
        x = self.crossattention(x, other, other_mask)
        return self.output(self.intermediate(x), x)
