"""Adapters: the bottleneck adapter, its parallel placement on a kept layer, and the skip switch."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """DAS's bottleneck adapter: LayerNorm → down → ReLU → up. Initialised as the reference's
    ``ParallelAdapter`` (BERT init): weights normal(0, 0.02), zero biases (``up`` is not zeroed)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, width)
        self.up = nn.Linear(width, dim)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(self.norm(x))))


class ParallelAdapter(nn.Module):
    """Wraps an output block called as ``block(hidden, residual)`` with a parallel adapter on ``residual``.

    ``into_residual`` adds the adapter to the residual the block sums in (post-LN BERT blocks: the sum is
    normalised with the rest); otherwise it is added to the block's output (ViLT's attention output block
    ignores its residual argument).
    """

    def __init__(self, block: nn.Module, adapter: Adapter, into_residual: bool = True) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter
        self.into_residual = into_residual

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.into_residual:
            return self.block(hidden, residual + self.adapter(residual))
        return self.block(hidden, residual) + self.adapter(residual)


class SkippableLayer(nn.Module):
    """One candidate layer: runs ``layer`` or, when skipped, ``x + skip_adapter(x)``.

    The first argument is the stream the layer updates; the rest go to ``layer`` only. A skip-adapter
    width of 0 means plain layer removal (a skipped layer is the identity, as layer-pruning tools do).
    In an exported subnet a skipped layer has ``layer = None`` and a kept one ``skip_adapter = None``.
    """

    def __init__(self, name: str, layer: nn.Module, dim: int, skip_width: int) -> None:
        super().__init__()
        self.name = name
        self.layer: nn.Module | None = layer
        self.skip_adapter: Adapter | None = Adapter(dim, skip_width) if skip_width > 0 else None
        self.skipped = False
        self.exported = False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.skipped:
            return x if self.skip_adapter is None else x + self.skip_adapter(x)
        out = self.layer(x, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def set_skipped(self, skipped: bool) -> None:
        if self.exported and skipped != self.skipped:
            from das_tune.errors import UserError

            state = "skipped" if self.skipped else "kept"
            raise UserError(
                f"layer {self.name} is permanently {state} in this exported subnet; "
                "change the skip set on the supernet and export again"
            )
        self.skipped = skipped

    def freeze_choice(self) -> None:
        """Drop whichever path the current choice does not use (for export)."""
        if self.skipped:
            self.layer = None
        else:
            self.skip_adapter = None
        self.exported = True


def add_lora(layer: nn.Module, targets: list[str], rank: int) -> None:
    """LoRA (via ``peft``) on the linear layers of ``layer`` whose names end in ``targets``."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets), layer)
